//! Node settings the Pod schema has no field for, as annotations so the file
//! stays valid Kubernetes. The keys are documented in the README.

use std::collections::{BTreeMap, HashSet};

use crate::cpuset::CpuSet;
use crate::diag::{push_key, Issues};
use crate::quantity::Quantity;

use super::NodeInfo;

/// `cpuset.podagent.io/<container>: "0-1,3"`: pin a container to CPUs.
pub const CPUSET: &str = "cpuset.podagent.io";
/// `oom-score-adj.podagent.io/<container>: "-500"`: override the QoS value.
pub const OOM_SCORE_ADJ: &str = "oom-score-adj.podagent.io";
/// `oom-kill-disable.podagent.io/<container>: "true"`: cgroup v1 only.
pub const OOM_KILL_DISABLE: &str = "oom-kill-disable.podagent.io";
/// `swap.podagent.io/<container>: "256Mi"`: swap allowed beyond the memory limit.
pub const SWAP: &str = "swap.podagent.io";
/// `io.podagent.io/<container>: "/dev/sda wbps=1Mi; weight=500"`: block IO
/// throttles and weight (`crate::io`).
pub const IO: &str = "io.podagent.io";
/// `podagent.io/pids-limit: "1024"`: the pod's pids limit.
pub const PIDS_LIMIT: &str = "podagent.io/pids-limit";

/// The per-container settings read from the annotations.
#[derive(Debug, Default, Clone)]
pub struct ContainerOverrides {
    pub cpuset: Option<CpuSet>,
    pub oom_score_adj: Option<i32>,
    pub oom_kill_disable: bool,
    pub swap_bytes: Option<u64>,
    pub io: crate::io::IoLimits,
}

#[derive(Debug, Default)]
pub struct Overrides {
    pub containers: BTreeMap<String, ContainerOverrides>,
    pub pids_limit: Option<i64>,
}

/// Reads podagent's annotations; `containers` are the pod's container names
/// (an annotation naming another container is an error).
pub fn overrides(
    annotations: &BTreeMap<String, String>,
    containers: &HashSet<String>,
    node: &NodeInfo,
    issues: &mut Issues,
) -> Overrides {
    let mut out = Overrides::default();
    for (key, value) in annotations {
        let path = push_key("metadata.annotations", key);
        if key == PIDS_LIMIT {
            match value.trim().parse::<i64>() {
                Ok(n) if n > 0 || n == -1 => out.pids_limit = Some(n),
                _ => issues.error(
                    path,
                    format!(
                        "{value:?} is not a pids limit: a positive integer, or -1 for unlimited"
                    ),
                ),
            }
            continue;
        }
        let Some((prefix, container)) = key.split_once('/') else {
            continue;
        };
        let known = [CPUSET, OOM_SCORE_ADJ, OOM_KILL_DISABLE, SWAP, IO];
        if !known.contains(&prefix) {
            if prefix == "podagent.io" || prefix.ends_with(".podagent.io") {
                issues.warn(
                    path,
                    format!(
                        "unknown podagent annotation (known: {}/<container>, {PIDS_LIMIT})",
                        known.join("/<container>, ")
                    ),
                );
            }
            continue;
        }
        if !containers.contains(container) {
            issues.error(
                path,
                format!("names container {container:?}, which this pod does not have"),
            );
            continue;
        }
        let o = out.containers.entry(container.to_string()).or_default();
        match prefix {
            CPUSET => match CpuSet::parse(value) {
                Ok(set) => {
                    let missing = node
                        .cpus
                        .as_ref()
                        .map(|n| set.difference(n))
                        .unwrap_or_default();
                    if missing.is_empty() {
                        o.cpuset = Some(set);
                    } else {
                        let node_cpus = node
                            .cpus
                            .as_ref()
                            .map(|c| c.to_string())
                            .unwrap_or_default();
                        issues.error(
                            path,
                            format!("cpus {missing:?} are not on this node (online: {node_cpus})"),
                        );
                    }
                }
                Err(e) => issues.error(path, e.to_string()),
            },
            OOM_SCORE_ADJ => match value.trim().parse::<i32>() {
                Ok(n) if (-1000..=1000).contains(&n) => o.oom_score_adj = Some(n),
                _ => issues.error(
                    path,
                    format!("{value:?} is not an oom_score_adj: an integer from -1000 to 1000"),
                ),
            },
            OOM_KILL_DISABLE => match value.trim() {
                "true" => o.oom_kill_disable = true,
                "false" => o.oom_kill_disable = false,
                _ => issues.error(path, format!("{value:?} is not \"true\" or \"false\"")),
            },
            SWAP => match Quantity::parse(value).and_then(|q| q.value_ceil()) {
                Ok(b) => o.swap_bytes = Some(b),
                Err(e) => issues.error(path, e.to_string()),
            },
            IO => match crate::io::IoLimits::parse(value, &node.block_devices) {
                Ok(io) => o.io = io,
                Err(errors) => {
                    for e in errors {
                        issues.error(path.clone(), e);
                    }
                }
            },
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeInfo {
        NodeInfo {
            cpus: Some(CpuSet::parse("0-3").unwrap()),
            block_devices: crate::io::BlockDevices::table(&[("/dev/sda", 8, 0)]),
            ..NodeInfo::default()
        }
    }

    fn run(pairs: &[(&str, &str)]) -> (Overrides, Vec<crate::diag::Issue>) {
        let ann = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let names = ["web".to_string(), "log".to_string()].into_iter().collect();
        let mut issues = Issues::default();
        let o = overrides(&ann, &names, &node(), &mut issues);
        (o, issues.into_vec())
    }

    #[test]
    fn annotations_set_per_container_values() {
        let (o, issues) = run(&[
            ("cpuset.podagent.io/web", "1-2"),
            ("oom-score-adj.podagent.io/log", "-500"),
            ("oom-kill-disable.podagent.io/web", "true"),
            ("swap.podagent.io/web", "64Mi"),
            ("podagent.io/pids-limit", "256"),
            ("io.podagent.io/web", "/dev/sda wbps=1Mi; weight=300"),
            ("example.com/other", "x"),
        ]);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(
            o.containers["web"].cpuset.as_ref().unwrap().to_string(),
            "1-2"
        );
        assert!(o.containers["web"].oom_kill_disable);
        assert_eq!(o.containers["web"].swap_bytes, Some(64 << 20));
        assert_eq!(o.containers["log"].oom_score_adj, Some(-500));
        assert_eq!(o.pids_limit, Some(256));
        let io = &o.containers["web"].io;
        assert_eq!(io.weight, Some(300));
        assert_eq!(
            (io.devices[0].major, io.devices[0].wbps),
            (8, Some(1 << 20))
        );
        assert!(o.containers["log"].io.is_empty());
    }

    #[test]
    fn bad_annotations_are_errors_naming_the_key() {
        let (_, issues) = run(&[
            ("cpuset.podagent.io/web", "2-9"),
            ("cpuset.podagent.io/nope", "1"),
            ("oom-score-adj.podagent.io/web", "-1001"),
            ("cpusett.podagent.io/web", "1"),
            ("io.podagent.io/log", "/dev/sdz wbps=1; /dev/sda rbs=2"),
        ]);
        let msgs: Vec<_> = issues
            .iter()
            .map(|i| (i.path.as_str(), i.message.as_str()))
            .collect();
        assert!(msgs.contains(&(
            "metadata.annotations[\"cpuset.podagent.io/web\"]",
            "cpus [4, 5, 6, 7, 8, 9] are not on this node (online: 0-3)"
        )));
        assert!(msgs
            .iter()
            .any(|(p, m)| p.contains("nope") && m.contains("does not have")));
        assert!(msgs.iter().any(|(p, _)| p.contains("oom-score-adj")));
        // Every problem of the IO annotation, each at its key.
        let io = "metadata.annotations[\"io.podagent.io/log\"]";
        assert!(msgs.contains(&(io, "segment 1: /dev/sdz: not a block device")));
        assert!(msgs.contains(&(
            io,
            "segment 2: unknown key \"rbs\" (known: rbps, wbps, riops, wiops)"
        )));
        assert!(issues
            .iter()
            .any(|i| i.path.contains("cpusett") && i.severity == crate::diag::Severity::Warning));
    }
}
