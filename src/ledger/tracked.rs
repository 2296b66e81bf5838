//! A map that remembers which keys changed since the last save (delta persistence).
//!
//! The ledger keeps orders, stored payments, refunds and idempotency records in
//! [`Tracked`] maps. Every write path (`get_mut`, `insert`, `remove`, `retain`) marks the
//! key, so the shell can write back only the rows that changed instead of the whole event.
//! There is deliberately no `values_mut`: a loop that may change some entries collects their
//! keys first and uses `get_mut`, so an untouched entry is never rewritten.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
pub struct Tracked<V> {
    map: BTreeMap<String, V>,
    dirty: BTreeSet<String>,
}

impl<V> Default for Tracked<V> {
    fn default() -> Self {
        Tracked {
            map: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }
}

/// Equality is about the content; which keys are waiting to be saved does not matter.
impl<V: PartialEq> PartialEq for Tracked<V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<V: Eq> Eq for Tracked<V> {}

impl<V: Serialize> Serialize for Tracked<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Tracked<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Tracked {
            map: BTreeMap::deserialize(d)?,
            dirty: BTreeSet::new(),
        })
    }
}

impl<V> Tracked<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }

    /// Mutable access; marks the key changed (even if the caller then changes nothing).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let v = self.map.get_mut(key)?;
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_string());
        }
        Some(v)
    }

    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        self.dirty.insert(key.clone());
        self.map.insert(key, value)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let v = self.map.remove(key)?;
        self.dirty.insert(key.to_string());
        Some(v)
    }

    /// Keeps the entries for which `keep` is true; marks the removed keys.
    pub fn retain(&mut self, mut keep: impl FnMut(&String, &V) -> bool) {
        let dirty = &mut self.dirty;
        self.map.retain(|k, v| {
            let kept = keep(k, v);
            if !kept {
                dirty.insert(k.clone());
            }
            kept
        });
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The keys changed since the last call, each with its value (`None`: removed), and
    /// forgets them.
    pub fn take_changes(&mut self) -> Vec<(String, Option<&V>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|k| {
                let v = self.map.get(&k);
                (k, v)
            })
            .collect()
    }

    /// Marks every key changed (after loading from an older storage layout).
    pub fn mark_all(&mut self) {
        self.dirty = self.map.keys().cloned().collect();
    }

    /// Whether some key waits to be saved.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Builds a map from stored rows; nothing is marked changed.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, V)>) -> Tracked<V> {
        Tracked {
            map: rows.into_iter().collect(),
            dirty: BTreeSet::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_path_marks_its_key_and_reads_do_not() {
        let mut t: Tracked<u32> = Tracked::from_rows([("a".into(), 1), ("b".into(), 2)]);
        assert!(!t.has_changes());
        assert_eq!(t.get("a"), Some(&1));
        assert_eq!(t.values().count(), 2);
        assert!(t.contains_key("b"));
        assert!(!t.has_changes(), "reads mark nothing");
        if let Some(v) = t.get_mut("a") {
            *v = 10;
        }
        t.insert("c".into(), 3);
        t.remove("b");
        t.remove("zz");
        let changes: Vec<(String, Option<u32>)> = t
            .take_changes()
            .into_iter()
            .map(|(k, v)| (k, v.copied()))
            .collect();
        assert_eq!(
            changes,
            vec![
                ("a".into(), Some(10)),
                ("b".into(), None),
                ("c".into(), Some(3))
            ]
        );
        assert!(!t.has_changes(), "taking the changes clears them");
    }

    #[test]
    fn retain_marks_only_removed_keys() {
        let mut t: Tracked<u32> = Tracked::from_rows((0..10).map(|i| (format!("k{i}"), i)));
        t.retain(|_, v| v % 3 != 0);
        let keys: Vec<String> = t.take_changes().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["k0", "k3", "k6", "k9"]);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn serde_is_the_plain_map_and_equality_ignores_pending_changes() {
        let mut t: Tracked<u32> = Tracked::default();
        t.insert("x".into(), 7);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"x":7}"#);
        let back: Tracked<u32> = serde_json::from_str(&json).unwrap();
        assert!(!back.has_changes());
        assert_eq!(back, t);
        let mut all = back.clone();
        all.mark_all();
        assert_eq!(all.take_changes().len(), 1);
    }
}
