//! Block IO limits of a container, from the annotation
//! `io.podagent.io/<container>` (Kubernetes has no field for them; these are
//! docker's `--blkio-weight` and `--device-{read,write}-{bps,iops}`):
//!
//! ```text
//! /dev/sda rbps=10485760 wbps=1Mi riops=200 wiops=100; /dev/sdb wbps=4Mi; weight=500
//! ```
//!
//! Segments are separated by `;`. A device segment is a block device's path
//! and one or more limits: `rbps`/`wbps` in bytes per second (a plain number
//! or a quantity, `1Mi`), `riops`/`wiops` in operations per second. The
//! segment `weight=N` (10 to 1000, docker's range) is the container's
//! proportional share of every device; per-device weights are not offered.
//! Devices are found by path through [`BlockDevices`], the caller's lookup.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::quantity::Quantity;

/// docker's and cgroup v1's range of `blkio.weight`.
pub const WEIGHT_MIN: u16 = 10;
pub const WEIGHT_MAX: u16 = 1000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IoLimits {
    /// Proportional share, [`WEIGHT_MIN`] to [`WEIGHT_MAX`].
    pub weight: Option<u16>,
    /// One entry per device, in the annotation's order.
    pub devices: Vec<IoDevice>,
}

/// The throttles of one block device; `None`: not limited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IoDevice {
    /// As written in the annotation.
    pub path: String,
    pub major: u32,
    pub minor: u32,
    pub rbps: Option<u64>,
    pub wbps: Option<u64>,
    pub riops: Option<u64>,
    pub wiops: Option<u64>,
}

impl IoDevice {
    /// The limits by their cgroup v2 `io.max` key.
    pub fn limits(&self) -> [(&'static str, Option<u64>); 4] {
        [
            ("rbps", self.rbps),
            ("wbps", self.wbps),
            ("riops", self.riops),
            ("wiops", self.wiops),
        ]
    }
}

impl IoLimits {
    pub const NONE: IoLimits = IoLimits {
        weight: None,
        devices: Vec::new(),
    };

    pub fn is_empty(&self) -> bool {
        self.weight.is_none() && self.devices.is_empty()
    }

    /// Reads the annotation's value; every problem is reported, each naming
    /// its segment (counted from 1) and key.
    pub fn parse(text: &str, devices: &BlockDevices) -> Result<IoLimits, Vec<String>> {
        let mut out = IoLimits::default();
        let mut errors = Vec::new();
        let segments: Vec<&str> = text.split(';').map(str::trim).collect();
        for (i, segment) in segments.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            let n = i + 1;
            let mut words = segment.split_whitespace();
            let first = words.next().unwrap_or_default();
            if !first.starts_with('/') {
                match first.split_once('=') {
                    Some(("weight", v)) if words.next().is_none() => match weight(v) {
                        Ok(_) if out.weight.is_some() => {
                            errors.push(format!("segment {n}: a second weight"))
                        }
                        Ok(w) => out.weight = Some(w),
                        Err(e) => errors.push(format!("segment {n}: weight {e}")),
                    },
                    _ => errors.push(format!(
                        "segment {n} ({segment:?}): expected a block device's path and its \
                         limits (\"/dev/sda wbps=1048576\") or \"weight=N\""
                    )),
                }
                continue;
            }
            match device(n, first, words, devices) {
                Ok(d) => {
                    if let Some(other) = out
                        .devices
                        .iter()
                        .find(|o| (o.major, o.minor) == (d.major, d.minor))
                    {
                        errors.push(format!(
                            "segment {n}: {} is device {}:{} again (as {})",
                            d.path, d.major, d.minor, other.path
                        ));
                    } else {
                        out.devices.push(d);
                    }
                }
                Err(e) => errors.extend(e),
            }
        }
        if out.is_empty() && errors.is_empty() {
            errors.push("no device limit and no weight".into());
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

fn weight(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(w) if (WEIGHT_MIN..=WEIGHT_MAX).contains(&w) => Ok(w),
        _ => Err(format!(
            "{v:?} is not a number from {WEIGHT_MIN} to {WEIGHT_MAX}"
        )),
    }
}

fn device<'a>(
    n: usize,
    path: &str,
    words: impl Iterator<Item = &'a str>,
    devices: &BlockDevices,
) -> Result<IoDevice, Vec<String>> {
    let mut errors = Vec::new();
    let (major, minor) = devices.lookup(path).unwrap_or_else(|e| {
        errors.push(format!("segment {n}: {path}: {e}"));
        (0, 0)
    });
    let mut d = IoDevice {
        path: path.to_string(),
        major,
        minor,
        rbps: None,
        wbps: None,
        riops: None,
        wiops: None,
    };
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            errors.push(format!("segment {n}: {word:?} is not key=value"));
            continue;
        };
        let (slot, bytes) = match key {
            "rbps" => (&mut d.rbps, true),
            "wbps" => (&mut d.wbps, true),
            "riops" => (&mut d.riops, false),
            "wiops" => (&mut d.wiops, false),
            "weight" => {
                errors.push(format!(
                    "segment {n}: weight is the container's, for every device: write it as \
                     its own segment (\"; weight={value}\")"
                ));
                continue;
            }
            _ => {
                errors.push(format!(
                    "segment {n}: unknown key {key:?} (known: rbps, wbps, riops, wiops)"
                ));
                continue;
            }
        };
        if slot.is_some() {
            errors.push(format!("segment {n}: {key} given twice"));
            continue;
        }
        let parsed = if bytes {
            Quantity::parse(value)
                .and_then(|q| q.value_ceil())
                .map_err(|e| e.to_string())
        } else {
            value
                .parse::<u64>()
                .map_err(|_| "not a whole number".into())
        };
        match parsed {
            Ok(v) if v > 0 => *slot = Some(v),
            Ok(_) => errors.push(format!("segment {n}: {key}=0: a limit must be positive")),
            Err(e) => errors.push(format!("segment {n}: {key}={value:?}: {e}")),
        }
    }
    if errors.is_empty() && d.limits().iter().all(|(_, v)| v.is_none()) {
        errors.push(format!(
            "segment {n}: {path} has no limit (rbps, wbps, riops or wiops)"
        ));
    }
    if errors.is_empty() {
        Ok(d)
    } else {
        Err(errors)
    }
}

/// The cgroup v2 `io.weight` of a v1 weight, as runc converts it (10..1000
/// onto 1..10000, linearly).
pub fn v2_weight(w: u16) -> u64 {
    1 + (u64::from(w.clamp(WEIGHT_MIN, WEIGHT_MAX)) - 10) * 9999 / 990
}

type Lookup = dyn Fn(&str) -> Result<(u32, u32), String> + Send + Sync;

/// How resolution learns a block device's major and minor numbers from its
/// path: the caller's I/O (this crate does none). An error says why the path
/// is not a block device.
#[derive(Clone)]
pub struct BlockDevices(Arc<Lookup>);

impl BlockDevices {
    pub fn new(f: impl Fn(&str) -> Result<(u32, u32), String> + Send + Sync + 'static) -> Self {
        BlockDevices(Arc::new(f))
    }

    /// A fixed table, for tests and offline checks.
    pub fn table(entries: &[(&str, u32, u32)]) -> Self {
        let entries: Vec<(String, u32, u32)> = entries
            .iter()
            .map(|(p, a, b)| (p.to_string(), *a, *b))
            .collect();
        BlockDevices::new(move |path| {
            entries
                .iter()
                .find(|(p, _, _)| p == path)
                .map(|(_, a, b)| (*a, *b))
                .ok_or_else(|| "not a block device".to_string())
        })
    }

    pub fn lookup(&self, path: &str) -> Result<(u32, u32), String> {
        (self.0)(path)
    }
}

impl Default for BlockDevices {
    /// Knows no device.
    fn default() -> Self {
        BlockDevices::table(&[])
    }
}

impl fmt::Debug for BlockDevices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlockDevices(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> BlockDevices {
        BlockDevices::table(&[
            ("/dev/sda", 8, 0),
            ("/dev/disk/by-id/x", 8, 0),
            ("/dev/vdb", 254, 16),
        ])
    }

    #[test]
    fn devices_and_a_weight() {
        let io = IoLimits::parse(
            "/dev/sda rbps=10485760 wbps=1Mi riops=200 wiops=100; /dev/vdb wbps=4096 ;weight=500;",
            &node(),
        )
        .unwrap();
        assert_eq!(io.weight, Some(500));
        assert_eq!(
            io.devices,
            [
                IoDevice {
                    path: "/dev/sda".into(),
                    major: 8,
                    minor: 0,
                    rbps: Some(10 << 20),
                    wbps: Some(1 << 20),
                    riops: Some(200),
                    wiops: Some(100),
                },
                IoDevice {
                    path: "/dev/vdb".into(),
                    major: 254,
                    minor: 16,
                    rbps: None,
                    wbps: Some(4096),
                    riops: None,
                    wiops: None,
                }
            ]
        );
        assert_eq!(IoLimits::parse("weight=10", &node()).unwrap().devices, []);
    }

    #[test]
    fn every_problem_is_named_by_segment_and_key() {
        let cases: &[(&str, &str)] = &[
            ("", "no device limit and no weight"),
            (" ; ", "no device limit and no weight"),
            ("/dev/sdz wbps=1", "segment 1: /dev/sdz: not a block device"),
            (
                "/dev/sda rbs=1",
                "segment 1: unknown key \"rbs\" (known: rbps, wbps, riops, wiops)",
            ),
            ("/dev/sda wbps=fast", "segment 1: wbps=\"fast\": "),
            (
                "/dev/sda wiops=1.5",
                "segment 1: wiops=\"1.5\": not a whole number",
            ),
            (
                "/dev/sda wbps=0",
                "segment 1: wbps=0: a limit must be positive",
            ),
            ("/dev/sda wbps=1 wbps=2", "segment 1: wbps given twice"),
            ("/dev/sda", "segment 1: /dev/sda has no limit"),
            ("/dev/sda wbps", "segment 1: \"wbps\" is not key=value"),
            (
                "/dev/sda weight=100",
                "segment 1: weight is the container's",
            ),
            (
                "weight=5",
                "segment 1: weight \"5\" is not a number from 10 to 1000",
            ),
            ("weight=1001", "is not a number from 10 to 1000"),
            ("weight=100; weight=200", "segment 2: a second weight"),
            (
                "sda wbps=1",
                "segment 1 (\"sda wbps=1\"): expected a block device's path",
            ),
            ("weight=100 wbps=1", "expected a block device's path"),
            (
                "/dev/sda wbps=1; /dev/disk/by-id/x rbps=1",
                "segment 2: /dev/disk/by-id/x is device 8:0 again (as /dev/sda)",
            ),
        ];
        for (text, want) in cases {
            let errors = IoLimits::parse(text, &node()).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with(want) || e.contains(want)),
                "{text:?}: {errors:?}"
            );
        }
        // Each problem, not only the first.
        let errors = IoLimits::parse("/dev/sdz rbs=1 wbps=0; weight=1", &node()).unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
    }

    #[test]
    fn v2_weight_is_runcs_conversion() {
        // runc's ConvertBlkIOToIOWeightValue: 1 + (w - 10) * 9999 / 990.
        for (v1, v2) in [(10, 1), (100, 910), (500, 4950), (1000, 10000)] {
            assert_eq!(v2_weight(v1), v2, "{v1}");
        }
    }
}
