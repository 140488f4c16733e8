//! `ByName`: a pod's containers by name. A pod has a few, so a vector
//! searched in order: a `BTreeMap` would allocate a node with room for
//! eleven values for every pod, and the agent builds these on every pass.
//! Iteration is in insertion order.

use std::borrow::Borrow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByName<V, K = String>(Vec<(K, V)>);

impl<V, K> Default for ByName<V, K> {
    fn default() -> Self {
        ByName(Vec::new())
    }
}

impl<V, K: Borrow<str>> ByName<V, K> {
    pub fn get(&self, name: &str) -> Option<&V> {
        self.0
            .iter()
            .find(|(n, _)| n.borrow() == name)
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        self.0
            .iter_mut()
            .find(|(n, _)| n.borrow() == name)
            .map(|(_, v)| v)
    }

    /// Adds the value, or replaces the one of that name.
    pub fn insert(&mut self, name: K, value: V) {
        match self.0.iter().position(|(n, _)| n.borrow() == name.borrow()) {
            Some(i) => self.0[i].1 = value,
            None => self.0.push((name, value)),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<V> {
        let i = self.0.iter().position(|(n, _)| n.borrow() == name)?;
        Some(self.0.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.0.iter_mut().map(|(n, v)| (&*n, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(n, _)| n)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.0.iter_mut().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V, K: Borrow<str>> FromIterator<(K, V)> for ByName<V, K> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut out = ByName::default();
        for (k, v) in iter {
            out.insert(k, v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::ByName;

    #[test]
    fn a_name_is_held_once_in_insertion_order() {
        let mut c: ByName<u32> = ByName::default();
        c.insert("side".into(), 1);
        c.insert("app".into(), 2);
        c.insert("side".into(), 3);
        assert_eq!(c.keys().collect::<Vec<_>>(), ["side", "app"]);
        assert_eq!(
            (c.get("side"), c.get("app"), c.get("x")),
            (Some(&3), Some(&2), None)
        );
        *c.get_mut("app").unwrap() += 10;
        assert_eq!(c.remove("side"), Some(3));
        assert_eq!(c.remove("side"), None);
        assert_eq!(c.iter().collect::<Vec<_>>(), [(&"app".to_string(), &12)]);
        let borrowed: ByName<u8, &str> = [("a", 1), ("b", 2), ("a", 3)].into_iter().collect();
        assert_eq!((borrowed.len(), borrowed.get("a")), (2, Some(&3)));
    }
}
