//! Image garbage collection, as the kubelet does it: when the store's
//! filesystem is fuller than a high threshold (default 85%), unused images
//! are removed, least recently used first, until it is down to a low one
//! (80%); an image younger than a minimum age (2 min) is kept, and so is
//! every image a container of the node uses or may use again (the caller
//! says which: images of the pods desired or running, and of any overlay
//! still mounted).
//!
//! It runs on a thread of its own. An image is removed holding the caller's
//! in-use set, which the agent's loop updates before it starts a container,
//! so that no start begins with an image the collector is taking; only
//! renames happen under it (into a trash directory deleted after).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::{ImageStore, Result};

/// The thresholds, in percent of the filesystem used, and the minimum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub high: u8,
    pub low: u8,
    pub min_age: Duration,
}

impl Policy {
    /// A high threshold of 100 turns collection off (as the kubelet's).
    pub fn enabled(&self) -> bool {
        self.high < 100
    }
}

/// The filesystem's use in percent, as the kubelet computes it.
pub fn used_percent(capacity: u64, available: u64) -> u64 {
    if capacity == 0 {
        return 0;
    }
    100 - (available.min(capacity) * 100 / capacity)
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The filesystem's use before, in percent.
    pub used_before: u64,
    pub used_after: u64,
    /// Removed, in the order removed.
    pub removed: Vec<String>,
    /// Bytes the filesystem gained.
    pub freed: u64,
    /// Still above the low threshold: nothing more could be removed.
    pub short: bool,
}

/// An image that may be collected, with its last use (or, never used,
/// when it was tagged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub reference: String,
    pub last_used: SystemTime,
}

/// The images to try, in order: least recently used first, none younger
/// than the minimum age.
pub fn order(mut candidates: Vec<Candidate>, min_age: Duration, now: SystemTime) -> Vec<String> {
    candidates.retain(|c| now.duration_since(c.last_used).unwrap_or_default() >= min_age);
    candidates.sort_by(|a, b| {
        a.last_used
            .cmp(&b.last_used)
            .then(a.reference.cmp(&b.reference))
    });
    candidates.into_iter().map(|c| c.reference).collect()
}

/// Collects when the filesystem is above `policy.high`; `None` when it is
/// not. `in_use` holds normalised references; `last_used` is the agent's
/// record of starts; `mounted` says whether an image's layers are in a
/// mounted overlay.
pub fn collect(
    store: &ImageStore,
    policy: &Policy,
    in_use: &Mutex<BTreeSet<String>>,
    last_used: &BTreeMap<String, SystemTime>,
    mounted: &dyn Fn(&[PathBuf]) -> bool,
    now: SystemTime,
) -> Result<Option<Report>> {
    let (capacity, available) = store.filesystem()?;
    let used_before = used_percent(capacity, available);
    if !policy.enabled() || used_before < u64::from(policy.high) {
        return Ok(None);
    }
    // The kubelet's goal: free space back to (100 - low)% of the capacity.
    let wanted = capacity * (100 - u64::from(policy.low.min(100))) / 100;
    let tagged = store.tagged_times()?;
    let candidates = store
        .list()?
        .into_iter()
        .map(|i| {
            let used = last_used.get(&i.reference).copied();
            let at = tagged.get(&i.reference).copied();
            Candidate {
                last_used: used.max(at).unwrap_or(SystemTime::UNIX_EPOCH),
                reference: i.reference,
            }
        })
        .collect();
    let mut report = Report {
        used_before,
        ..Report::default()
    };
    let mut free = available;
    for reference in order(candidates, policy.min_age, now) {
        if free >= wanted {
            break;
        }
        let trash = store.trash_dir()?;
        {
            let busy = in_use.lock().unwrap_or_else(|e| e.into_inner());
            let layers = store.layer_dirs(&reference).unwrap_or_default();
            if busy.contains(&reference) || mounted(&layers) {
                continue;
            }
            store.remove_to(&reference, trash.path())?;
        }
        // Deleted here, with nothing held.
        drop(trash);
        report.removed.push(reference);
        free = store.filesystem()?.1;
    }
    report.freed = free.saturating_sub(available);
    report.used_after = used_percent(capacity, free);
    report.short = free < wanted;
    Ok(Some(report))
}

/// The mount points of overlays that have one of `layers` among their lower
/// dirs (in `/proc/self/mountinfo`'s text).
pub fn overlays_using(mountinfo: &str, layers: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        if r.next() != Some("overlay") {
            continue;
        }
        let opts = r.nth(1).unwrap_or("");
        let Some(lower) = opts.split(',').find_map(|o| o.strip_prefix("lowerdir=")) else {
            continue;
        };
        if lower
            .split(':')
            .any(|d| layers.iter().any(|l| l.as_os_str() == d))
        {
            if let Some(point) = left.split_whitespace().nth(4) {
                out.push(point.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_first_and_none_too_young() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let c = |r: &str, s: u64| Candidate {
            reference: r.into(),
            last_used: at(s),
        };
        let now = at(1000);
        let got = order(
            vec![c("b", 500), c("a", 100), c("young", 950), c("c", 800)],
            Duration::from_secs(120),
            now,
        );
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(order(vec![c("x", 1000)], Duration::ZERO, now), ["x"]);
    }

    #[test]
    fn use_is_counted_as_the_kubelet_does() {
        assert_eq!(used_percent(1000, 150), 85);
        assert_eq!(used_percent(1000, 151), 85);
        assert_eq!(used_percent(1000, 1000), 0);
        assert_eq!(used_percent(0, 0), 0);
        assert!(!Policy {
            high: 100,
            low: 80,
            min_age: Duration::ZERO
        }
        .enabled());
    }
}
