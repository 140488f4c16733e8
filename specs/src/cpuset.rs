//! CPU lists in the kernel's syntax (`0-1,3`), as `cpuset.cpus` takes them.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

/// CPUs above this are refused: no node has them, and a typo like `0-40000`
/// should not allocate a huge set.
pub const MAX_CPU: u32 = 8191;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuSetError {
    #[error("empty cpu list")]
    Empty,
    #[error("{0:?} is not a cpu number or range (expected a list like \"0-1,3\")")]
    Syntax(String),
    #[error("range {0:?} is reversed (start must not exceed end)")]
    Reversed(String),
    #[error("cpu {0} is above the largest supported cpu number {MAX_CPU}")]
    TooLarge(u32),
}

/// A non-empty set of CPU numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CpuSet(BTreeSet<u32>);

impl CpuSet {
    pub fn parse(s: &str) -> Result<Self, CpuSetError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(CpuSetError::Empty);
        }
        let mut set = BTreeSet::new();
        for part in s.split(',') {
            let part = part.trim();
            let num = |t: &str| -> Result<u32, CpuSetError> {
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) || t.len() > 6 {
                    return Err(CpuSetError::Syntax(part.to_string()));
                }
                let n: u32 = t
                    .parse()
                    .map_err(|_| CpuSetError::Syntax(part.to_string()))?;
                if n > MAX_CPU {
                    return Err(CpuSetError::TooLarge(n));
                }
                Ok(n)
            };
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (num(a.trim())?, num(b.trim())?),
                None => {
                    let n = num(part)?;
                    (n, n)
                }
            };
            if a > b {
                return Err(CpuSetError::Reversed(part.to_string()));
            }
            set.extend(a..=b);
        }
        Ok(CpuSet(set))
    }

    /// The set of `cpus`; `None` when there are none (a set is never empty).
    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> Option<Self> {
        let set: BTreeSet<u32> = cpus.into_iter().collect();
        (!set.is_empty()).then_some(CpuSet(set))
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// CPUs of `self` missing from `other`.
    pub fn difference(&self, other: &CpuSet) -> Vec<u32> {
        self.0.difference(&other.0).copied().collect()
    }
}

impl fmt::Display for CpuSet {
    /// The canonical form: ascending ranges, `0-3,5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut iter = self.0.iter().copied().peekable();
        let mut first = true;
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end = iter.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for CpuSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lists_and_ranges_parse_to_a_canonical_form() {
        assert_eq!(CpuSet::parse("0-1,3").unwrap().to_string(), "0-1,3");
        assert_eq!(CpuSet::parse("3,0,1,2").unwrap().to_string(), "0-3");
        assert_eq!(CpuSet::parse(" 5 ").unwrap().to_string(), "5");
        assert_eq!(CpuSet::parse("0-2,1-4,7").unwrap().to_string(), "0-4,7");
    }

    #[test]
    fn malformed_lists_are_rejected() {
        assert_eq!(CpuSet::parse(""), Err(CpuSetError::Empty));
        assert_eq!(
            CpuSet::parse("3-1"),
            Err(CpuSetError::Reversed("3-1".into()))
        );
        assert_eq!(CpuSet::parse("0,,1"), Err(CpuSetError::Syntax("".into())));
        assert_eq!(CpuSet::parse("a"), Err(CpuSetError::Syntax("a".into())));
        assert_eq!(CpuSet::parse("1-"), Err(CpuSetError::Syntax("1-".into())));
        assert_eq!(CpuSet::parse("-1"), Err(CpuSetError::Syntax("-1".into())));
        assert_eq!(CpuSet::parse("99999"), Err(CpuSetError::TooLarge(99999)));
    }

    proptest! {
        #[test]
        fn display_round_trips(cpus in proptest::collection::btree_set(0u32..256, 1..40)) {
            let list = cpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let set = CpuSet::parse(&list).unwrap();
            let again = CpuSet::parse(&set.to_string()).unwrap();
            prop_assert_eq!(&set, &again);
            prop_assert_eq!(set.iter().collect::<BTreeSet<_>>(), cpus);
        }
    }
}
