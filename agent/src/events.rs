//! Events: what happened to which pod and container, kept in a bounded ring
//! in memory (`podctl events`, `podctl describe`) and logged as one line
//! each. A repeat of the most recent event for the same object and reason
//! bumps its count and time instead of adding a line, as Kubernetes'
//! event aggregation does.

use std::collections::VecDeque;

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
}

#[derive(Debug, Default)]
pub struct Events {
    ring: VecDeque<Event>,
    /// Log each event as a JSON object on one line (`--log-format json`).
    pub json_log: bool,
}

impl Events {
    pub fn new(json_log: bool) -> Self {
        Events {
            ring: VecDeque::new(),
            json_log,
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
                return;
            }
        }
        if self.ring.len() == CAPACITY {
            self.ring.pop_front();
        }
        self.ring.push_back(Event {
            time: now.clone(),
            first_time: now,
            kind,
            reason: reason.to_string(),
            object: object.to_string(),
            container: container.map(str::to_string),
            message,
            count: 1,
        });
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
