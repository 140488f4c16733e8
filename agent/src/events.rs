//! Events: what happened to which pod and container, kept in a bounded ring
//! in memory (`podctl events`, `podctl describe`, the Kubernetes API) and
//! logged as one line each. A repeat of the most recent event for the same
//! object and reason bumps its count and time instead of adding a line, as
//! Kubernetes' event aggregation does.
//!
//! The ring survives an agent restart: each new or bumped event is appended
//! to a journal in the state dir (one JSON line, one write, no sync: the
//! state dir is where the agent keeps what only a running node needs), read
//! back at start, the latest line of an event winning. The journal is
//! rewritten from the ring when it holds four times the ring's lines.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many events the ring keeps.
pub const CAPACITY: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Normal,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 time of the last occurrence.
    pub time: String,
    /// Of the first occurrence.
    pub first_time: String,
    pub kind: Kind,
    /// Kubernetes-style reason: Created, Started, Killing, BackOff, ...
    pub reason: String,
    /// `namespace/name` of the pod, or the manifest file for a file's event.
    pub object: String,
    pub container: Option<String>,
    pub message: String,
    pub count: u32,
    /// Its name's suffix in the Kubernetes API: the resource version it was
    /// made at, unique.
    #[serde(default)]
    pub id: u64,
    /// Its resource version: moves when it is counted again.
    #[serde(default)]
    pub rv: u64,
}

#[derive(Debug, Default)]
pub struct Events {
    ring: VecDeque<Event>,
    /// Log each event as a JSON object on one line (`--log-format json`).
    pub json_log: bool,
    journal: Option<Journal>,
}

#[derive(Debug)]
struct Journal {
    path: PathBuf,
    file: std::fs::File,
    lines: usize,
}

impl Events {
    pub fn new(json_log: bool) -> Self {
        Events {
            ring: VecDeque::new(),
            json_log,
            journal: None,
        }
    }

    /// Reads the ring an earlier agent left in the journal at `path` (a
    /// torn or unreadable line is skipped) and appends every later change
    /// to it.
    pub fn persist(&mut self, path: &Path) -> std::io::Result<()> {
        let mut by_id: BTreeMap<u64, Event> = BTreeMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in text.lines() {
                    if let Ok(e) = serde_json::from_str::<Event>(line) {
                        by_id.insert(e.id, e);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut earlier: VecDeque<Event> = by_id.into_values().collect();
        while earlier.len() + self.ring.len() > CAPACITY {
            earlier.pop_front();
        }
        earlier.extend(self.ring.drain(..));
        self.ring = earlier;
        self.journal = Some(self.compact(path)?);
        Ok(())
    }

    /// Writes the ring as the journal (through a temporary file) and opens
    /// it for appending.
    fn compact(&self, path: &Path) -> std::io::Result<Journal> {
        let tmp = path.with_extension("tmp");
        let mut text = String::new();
        for e in &self.ring {
            text.push_str(&serde_json::to_string(e).unwrap_or_default());
            text.push('\n');
        }
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            lines: self.ring.len(),
        })
    }

    /// Appends the event to the journal; a failure loses only the journal
    /// (the ring is whole), said once.
    fn journal(&mut self, e: &Event) {
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        let mut line = serde_json::to_string(e).unwrap_or_default();
        line.push('\n');
        if let Err(err) = j.file.write_all(line.as_bytes()) {
            eprintln!(
                "podagent: the event journal {}: {err}: events are kept in memory only",
                j.path.display()
            );
            self.journal = None;
            return;
        }
        j.lines += 1;
        if j.lines > 4 * CAPACITY {
            let path = j.path.clone();
            match self.compact(&path) {
                Ok(j) => self.journal = Some(j),
                Err(err) => {
                    eprintln!(
                        "podagent: the event journal {}: {err}: events are kept in memory only",
                        path.display()
                    );
                    self.journal = None;
                }
            }
        }
    }

    /// Records an event and logs it on stderr.
    pub fn record(
        &mut self,
        kind: Kind,
        reason: &str,
        object: &str,
        container: Option<&str>,
        message: String,
        now: String,
    ) {
        if self.json_log {
            let line = serde_json::json!({
                "time": now,
                "level": if kind == Kind::Warning { "warn" } else { "info" },
                "reason": reason,
                "object": object,
                "container": container,
                "message": message,
            });
            eprintln!("{line}");
        } else {
            let container_s = container.map_or(String::new(), |c| format!(" container {c}"));
            eprintln!("podagent: {kind:?} {reason} {object}{container_s}: {message}");
        }
        // Aggregate with the latest event of the same object and container.
        if let Some(last) = self
            .ring
            .iter_mut()
            .rev()
            .find(|e| e.object == object && e.container.as_deref() == container)
        {
            if last.reason == reason && last.message == message {
                last.count = last.count.saturating_add(1);
                last.time = now;
                last.rv = crate::kube::next_rv();
                let e = last.clone();
                self.journal(&e);
                return;
            }
        }
        if self.ring.len() == CAPACITY {
            self.ring.pop_front();
        }
        let id = crate::kube::next_rv();
        let e = Event {
            time: now.clone(),
            first_time: now,
            kind,
            reason: reason.to_string(),
            object: object.to_string(),
            container: container.map(str::to_string),
            message,
            count: 1,
            id,
            rv: id,
        };
        self.journal(&e);
        self.ring.push_back(e);
    }

    /// Oldest first.
    pub fn all(&self) -> Vec<Event> {
        self.ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ev: &mut Events, reason: &str, object: &str, msg: &str, t: &str) {
        ev.record(
            Kind::Normal,
            reason,
            object,
            Some("c"),
            msg.into(),
            t.into(),
        );
    }

    #[test]
    fn a_repeat_is_counted_and_a_change_is_a_new_line() {
        let mut ev = Events::default();
        rec(&mut ev, "BackOff", "default/a", "back-off 10s", "t1");
        rec(&mut ev, "BackOff", "default/a", "back-off 10s", "t2");
        rec(&mut ev, "BackOff", "default/b", "back-off 10s", "t3");
        rec(&mut ev, "Started", "default/a", "started", "t4");
        rec(&mut ev, "BackOff", "default/a", "back-off 10s", "t5");
        let all = ev.all();
        assert_eq!(all.len(), 4);
        assert_eq!(
            (
                all[0].count,
                all[0].first_time.as_str(),
                all[0].time.as_str()
            ),
            (2, "t1", "t2")
        );
        assert_eq!(all[3].count, 1, "not merged across a different event");
    }

    #[test]
    fn the_ring_survives_a_restart_through_its_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut ev = Events::default();
        ev.persist(&path).unwrap();
        rec(&mut ev, "Started", "default/a", "started", "t1");
        rec(&mut ev, "BackOff", "default/a", "back-off 10s", "t2");
        rec(&mut ev, "BackOff", "default/a", "back-off 10s", "t3");
        let before = ev.all();
        // A torn last line, as a crash in the middle of a write leaves.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"time\":\"t4\",\"fir")
            .unwrap();
        let mut again = Events::default();
        again.persist(&path).unwrap();
        assert_eq!(again.all(), before);
        assert_eq!(again.all()[1].count, 2);
        assert!(again.all()[0].id > 0 && again.all()[0].id < again.all()[1].id);
        // Compacted on load: one line an event.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        for i in 0..5 * CAPACITY {
            rec(&mut again, "Started", &format!("default/p{i}"), "x", "t");
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= 4 * CAPACITY + 1, "{lines} lines: compacted");
        let mut third = Events::default();
        third.persist(&path).unwrap();
        assert_eq!(third.all(), again.all());
    }

    #[test]
    fn the_ring_keeps_the_latest() {
        let mut ev = Events::default();
        for i in 0..CAPACITY + 10 {
            rec(&mut ev, "Started", &format!("default/p{i}"), "x", "t");
        }
        let all = ev.all();
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].object, "default/p10");
        assert_eq!(
            all[CAPACITY - 1].object,
            format!("default/p{}", CAPACITY + 9)
        );
    }
}
