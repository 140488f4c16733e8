//! The kubelet's numbers: cpu shares and quota, cgroup v2 weight, QoS class and
//! oom_score_adj. Pure arithmetic, tested against the values the kubelet and
//! runc produce.

use crate::plan::QosClass;

/// `cpu.cfs_period_us` the kubelet uses.
pub const CFS_PERIOD_US: u64 = 100_000;
/// The smallest quota the kubelet sets (`MinQuotaPeriod`).
pub const MIN_QUOTA_US: u64 = 1_000;
pub const MIN_SHARES: u64 = 2;
pub const MAX_SHARES: u64 = 262_144;

/// oom_score_adj of Guaranteed pods' containers.
pub const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
/// oom_score_adj of BestEffort pods' containers.
pub const BEST_EFFORT_OOM_SCORE_ADJ: i32 = 1000;

/// The kubelet's `MilliCPUToShares`: 1024 shares per cpu, at least 2.
pub fn cpu_shares(milli_cpu: u64) -> u64 {
    if milli_cpu == 0 {
        return MIN_SHARES;
    }
    (milli_cpu.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// The kubelet's `MilliCPUToQuota`: `None` (no quota) for no limit, at least
/// 1000 us otherwise.
pub fn cfs_quota_us(milli_cpu_limit: Option<u64>, period_us: u64) -> Option<u64> {
    match milli_cpu_limit {
        None | Some(0) => None,
        Some(m) => Some((m.saturating_mul(period_us) / 1000).max(MIN_QUOTA_US)),
    }
}

/// The cgroup v2 `cpu.weight` for cgroup v1 `cpu.shares` (which the
/// kubelet computes, `cpu_shares` above), as current runtimes convert them:
/// runc 1.3.2 and later, crun 1.23 and later and opencontainers/cgroups
/// (`ConvertCPUSharesToCgroupV2Value`). A quadratic in log2 of the shares
/// that maps the minimum, the default and the maximum onto each other:
/// 2 → 1, 1024 → 100, 262144 → 10000, so a container with one CPU's
/// request weighs what an unconfigured cgroup does. (The linear map that
/// runc used before, 1 + (shares − 2) × 9999 / 262142, gave 1024 → 39: a
/// pod's containers weighed less than the node's own services.) Computed in
/// f64 as the runtimes do; 0 stays 0 (unset).
pub fn cpu_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= MIN_SHARES {
        return 1;
    }
    if shares >= MAX_SHARES {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    // Within [1, 10000] for shares within (2, 262144): the cast cannot wrap.
    10f64.powf(exponent).ceil() as u64
}

/// What a QoS class is computed from: each container's effective cpu and memory
/// request and limit (a request defaults to the limit, as the API server does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QosInput {
    pub cpu_request: Option<u64>,
    pub cpu_limit: Option<u64>,
    pub memory_request: Option<u64>,
    pub memory_limit: Option<u64>,
}

/// Kubernetes' `GetPodQOS` over init and app containers.
pub fn qos_class(containers: &[QosInput]) -> QosClass {
    let any_set = containers.iter().any(|c| {
        c.cpu_request.unwrap_or(0) > 0
            || c.cpu_limit.unwrap_or(0) > 0
            || c.memory_request.unwrap_or(0) > 0
            || c.memory_limit.unwrap_or(0) > 0
    });
    if !any_set {
        return QosClass::BestEffort;
    }
    let guaranteed = containers.iter().all(|c| {
        matches!((c.cpu_request, c.cpu_limit), (Some(r), Some(l)) if r == l && l > 0)
            && matches!((c.memory_request, c.memory_limit), (Some(r), Some(l)) if r == l && l > 0)
    });
    if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// The kubelet's `GetContainerOOMScoreAdjust`: -997 for Guaranteed, 1000 for
/// BestEffort, and for Burstable `1000 - 1000 × request / node memory` clamped
/// to [3, 999], so a Burstable container always dies before a Guaranteed one
/// and after a BestEffort one.
pub fn oom_score_adj(qos: QosClass, memory_request: u64, node_memory: u64) -> i32 {
    match qos {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let node = node_memory.max(1) as u128;
            let adj = 1000 - ((1000 * memory_request as u128) / node).min(1000) as i32;
            adj.clamp(
                1000 + GUARANTEED_OOM_SCORE_ADJ,
                BEST_EFFORT_OOM_SCORE_ADJ - 1,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_1024_per_cpu_with_a_floor_of_two() {
        assert_eq!(cpu_shares(100), 102);
        assert_eq!(cpu_shares(250), 256);
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(1), 2);
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_shares(1_000_000), MAX_SHARES);
    }

    #[test]
    fn quota_is_the_limit_times_the_period_with_a_floor_of_1000us() {
        assert_eq!(cfs_quota_us(Some(250), CFS_PERIOD_US), Some(25_000));
        assert_eq!(cfs_quota_us(Some(200), CFS_PERIOD_US), Some(20_000));
        assert_eq!(cfs_quota_us(Some(1500), CFS_PERIOD_US), Some(150_000));
        assert_eq!(cfs_quota_us(Some(5), CFS_PERIOD_US), Some(1_000));
        assert_eq!(cfs_quota_us(None, CFS_PERIOD_US), None);
    }

    #[test]
    fn weight_is_the_current_runtimes_quadratic_map_of_shares() {
        // (shares, weight): the kubelet's shares for 0, 10m, 50m, 100m,
        // 250m, 500m, 1, 2, 4, 10 and 64 CPUs and the extremes; the weights
        // as runc >= 1.3.2 and crun >= 1.23 compute them (the formula
        // evaluated independently in IEEE double precision).
        let table = [
            (0, 0),
            (1, 1),
            (2, 1),
            (3, 2),
            (10, 4),
            (51, 11),
            (102, 17),
            (256, 35),
            (512, 59),
            (1024, 100),
            (2048, 174),
            (4096, 303),
            (10_240, 639),
            (65_536, 3023),
            (262_143, 10_000),
            (262_144, 10_000),
            (1 << 20, 10_000),
        ];
        for (shares, weight) in table {
            assert_eq!(cpu_weight(shares), weight, "shares {shares}");
        }
        // Monotonic over the whole range, and within [1, 10000].
        let mut last = 1;
        for shares in 2..=MAX_SHARES {
            let w = cpu_weight(shares);
            assert!(
                (last..=10_000).contains(&w),
                "shares {shares}: {w} after {last}"
            );
            last = w;
        }
    }

    fn q(cr: Option<u64>, cl: Option<u64>, mr: Option<u64>, ml: Option<u64>) -> QosInput {
        QosInput {
            cpu_request: cr,
            cpu_limit: cl,
            memory_request: mr,
            memory_limit: ml,
        }
    }

    #[test]
    fn qos_classes_follow_kubernetes() {
        assert_eq!(
            qos_class(&[q(None, None, None, None)]),
            QosClass::BestEffort
        );
        let g = q(Some(500), Some(500), Some(64), Some(64));
        assert_eq!(qos_class(&[g, g]), QosClass::Guaranteed);
        assert_eq!(
            qos_class(&[g, q(None, None, None, None)]),
            QosClass::Burstable
        );
        assert_eq!(
            qos_class(&[q(Some(100), Some(500), Some(64), Some(64))]),
            QosClass::Burstable
        );
        assert_eq!(
            qos_class(&[q(None, None, Some(64), None)]),
            QosClass::Burstable
        );
    }

    #[test]
    fn oom_score_adj_by_qos_class() {
        let gib = 1u64 << 30;
        assert_eq!(oom_score_adj(QosClass::Guaranteed, gib, 16 * gib), -997);
        assert_eq!(oom_score_adj(QosClass::BestEffort, 0, 16 * gib), 1000);
        // 1000 - 1000 × 4/16 = 750
        assert_eq!(oom_score_adj(QosClass::Burstable, 4 * gib, 16 * gib), 750);
        // A request of all the node's memory: clamped to 3, above Guaranteed.
        assert_eq!(oom_score_adj(QosClass::Burstable, 16 * gib, 16 * gib), 3);
        assert_eq!(oom_score_adj(QosClass::Burstable, 32 * gib, 16 * gib), 3);
        // No memory request: 999, below BestEffort.
        assert_eq!(oom_score_adj(QosClass::Burstable, 0, 16 * gib), 999);
        // 64Mi of 24GiB: 1000 - 65536000/24576 floor = 1000 - 2 = 998
        assert_eq!(oom_score_adj(QosClass::Burstable, 64 << 20, 24 * gib), 998);
    }
}
