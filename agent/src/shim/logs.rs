//! Container output in the CRI log format, one file per container, rotated by
//! size: `<RFC3339Nano> <stdout|stderr> <P|F> <line>`. A line longer than
//! `MAX_LINE` is split into partial (`P`) records and ends with a full (`F`)
//! one.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const MAX_LINE: usize = 16 * 1024;

/// `2026-11-22T23:31:41.123456789Z` for a time since the epoch.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[derive(Debug)]
pub struct CriLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: usize,
    pending: [Vec<u8>; 2],
}

impl CriLog {
    pub fn open(path: &Path, max_size: u64, max_files: usize) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(CriLog {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Appends bytes read from the container's stdout (`stream` 0) or
    /// stderr (1).
    pub fn feed(&mut self, stream: usize, bytes: &[u8]) -> std::io::Result<()> {
        self.pending[stream].extend_from_slice(bytes);
        while let Some(nl) = self.pending[stream].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending[stream].drain(..=nl).collect();
            self.record(stream, 'F', &line[..line.len() - 1])?;
        }
        while self.pending[stream].len() > MAX_LINE {
            let part: Vec<u8> = self.pending[stream].drain(..MAX_LINE).collect();
            self.record(stream, 'P', &part)?;
        }
        Ok(())
    }

    /// Writes what is left of unfinished lines (the stream ended).
    pub fn flush(&mut self) -> std::io::Result<()> {
        for stream in 0..2 {
            if !self.pending[stream].is_empty() {
                let rest = std::mem::take(&mut self.pending[stream]);
                self.record(stream, 'F', &rest)?;
            }
        }
        self.file.flush()
    }

    fn record(&mut self, stream: usize, tag: char, line: &[u8]) -> std::io::Result<()> {
        let name = if stream == 0 { "stdout" } else { "stderr" };
        let mut rec = format!("{} {name} {tag} ", rfc3339_nano(SystemTime::now())).into_bytes();
        rec.extend_from_slice(line);
        rec.push(b'\n');
        if self.size > 0 && self.size + rec.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&rec)?;
        self.size += rec.len() as u64;
        Ok(())
    }

    /// `log` → `log.1` → ... → `log.<max_files-1>`, the oldest dropped.
    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |i: usize| {
            if i == 0 {
                self.path.clone()
            } else {
                PathBuf::from(format!("{}.{i}", self.path.display()))
            }
        };
        if self.max_files == 1 {
            self.file.set_len(0)?;
        } else {
            for i in (0..self.max_files - 1).rev() {
                let _ = std::fs::rename(name(i), name(i + 1));
            }
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

/// The content of CRI log records, partial records joined: what the
/// container wrote, line by line.
pub fn lines(text: &str) -> Vec<String> {
    timed_lines(text).into_iter().map(|(_, l)| l).collect()
}

/// `lines` with the time of each line's first record (RFC 3339), as
/// `kubectl logs --timestamps` shows them.
pub fn timed_lines(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut partial = String::new();
    let mut first: Option<&str> = None;
    for rec in text.lines() {
        let mut f = rec.splitn(4, ' ');
        let (ts, _stream, tag, content) = (f.next(), f.next(), f.next(), f.next().unwrap_or(""));
        first = first.or(ts);
        partial.push_str(content);
        if tag != Some("P") {
            let ts = first.take().unwrap_or("").to_string();
            out.push((ts, std::mem::take(&mut partial)));
        }
    }
    if !partial.is_empty() {
        out.push((first.unwrap_or("").to_string(), partial));
    }
    out
}

/// A line as it is shown: its time first with `timestamps`.
pub fn shown((ts, line): &(String, String), timestamps: bool) -> String {
    if timestamps {
        format!("{ts} {line}")
    } else {
        line.clone()
    }
}

/// Prints records appended after `offset` until the container has exited
/// (its exit record exists) and everything is printed, or `gone` says the
/// reader has left (asked at least once a second).
pub fn follow(
    file: &Path,
    mut offset: u64,
    timestamps: bool,
    out: &mut dyn Write,
    gone: &dyn Fn() -> bool,
) {
    let state = file.parent().map(|d| d.join("state")).unwrap_or_default();
    loop {
        if gone() {
            return;
        }
        let exited = state.join("exit.json").exists();
        if let Ok(mut f) = std::fs::File::open(file) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < offset {
                offset = 0; // rotated
            }
            if f.seek(std::io::SeekFrom::Start(offset)).is_ok() {
                let mut rest = String::new();
                for line in std::io::BufReader::new(&mut f)
                    .lines()
                    .map_while(Result::ok)
                {
                    offset += line.len() as u64 + 1;
                    rest.push_str(&line);
                    rest.push('\n');
                }
                for l in timed_lines(&rest) {
                    if writeln!(out, "{}", shown(&l, timestamps)).is_err() {
                        return;
                    }
                }
                let _ = out.flush();
            }
        }
        if exited {
            return;
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        crate::runtime::wait_for_change(dir, Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_477_901, 123_456_789);
        assert_eq!(rfc3339_nano(t), "2026-11-23T23:51:41.123456789Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339_nano(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn partial_records_are_joined() {
        let text = "2026-01-01T00:00:00.000000000Z stdout P abc\n2026-01-01T00:00:00.000000001Z stdout F def\n2026-01-01T00:00:00.000000002Z stderr F oops\n";
        assert_eq!(super::lines(text), ["abcdef", "oops"]);
        let timed = super::timed_lines(text);
        assert_eq!(
            super::shown(&timed[0], true),
            "2026-01-01T00:00:00.000000000Z abcdef"
        );
        assert_eq!(timed[1].0, "2026-01-01T00:00:00.000000002Z");
    }

    #[test]
    fn lines_are_records_and_long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let mut log = CriLog::open(&p, 1 << 20, 2).unwrap();
        log.feed(0, b"hello\nwor").unwrap();
        log.feed(1, b"oops\n").unwrap();
        log.feed(0, b"ld\n").unwrap();
        log.feed(0, &vec![b'x'; MAX_LINE + 10]).unwrap();
        log.flush().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let recs: Vec<(&str, &str, usize)> = text
            .lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let _ts = f.next();
                (
                    f.next().unwrap(),
                    f.next().unwrap(),
                    f.next().unwrap_or("").len(),
                )
            })
            .collect();
        assert_eq!(
            recs,
            [
                ("stdout", "F", 5),
                ("stderr", "F", 4),
                ("stdout", "F", 5),
                ("stdout", "P", MAX_LINE),
                ("stdout", "F", 10)
            ]
        );
    }

    #[test]
    fn logs_rotate_by_size_keeping_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let mut log = CriLog::open(&p, 200, 3).unwrap();
        for i in 0..40 {
            log.feed(0, format!("line {i}\n").as_bytes()).unwrap();
        }
        log.flush().unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() <= 200);
        assert!(dir.path().join("c.log.1").exists());
        assert!(dir.path().join("c.log.2").exists());
        assert!(!dir.path().join("c.log.3").exists(), "at most 3 files");
        assert!(std::fs::read_to_string(&p).unwrap().contains("line 39"));
    }
}
