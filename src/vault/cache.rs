//! An in-isolate cache of unwrapped data keys, so most requests skip the KV read and the
//! unwrap. Pure: the shell passes `now_ms`.

use super::keys::DataKey;
use std::collections::HashMap;

/// Unwrapped keys by kid, each kept until `now + ttl` or its key's expiry, whichever is
/// first, plus which kid is this PoP's current key. A revocation written to KV reaches an
/// isolate at the latest after `ttl_ms` (choose about KV's 60 s propagation).
#[derive(Debug, Clone)]
pub struct KeyCache {
    ttl_ms: i64,
    max_entries: usize,
    entries: HashMap<String, (DataKey, i64)>,
    current: Option<String>,
}

impl KeyCache {
    /// `ttl_ms`: how long an entry is trusted; `max_entries`: bound on memory (the entry
    /// closest to leaving is evicted first).
    pub fn new(ttl_ms: i64, max_entries: usize) -> KeyCache {
        KeyCache {
            ttl_ms: ttl_ms.max(0),
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
            current: None,
        }
    }

    /// The cached key for `kid`, if still fresh at `now_ms`.
    pub fn get(&self, kid: &str, now_ms: i64) -> Option<&DataKey> {
        match self.entries.get(kid) {
            Some((key, until)) if now_ms < *until => Some(key),
            _ => None,
        }
    }

    /// Caches a key (replacing any entry for its kid).
    pub fn insert(&mut self, key: DataKey, now_ms: i64) {
        self.evict_expired(now_ms);
        let until = now_ms
            .saturating_add(self.ttl_ms)
            .min(key.expires_ms.saturating_add(1));
        if !self.entries.contains_key(&key.kid) && self.entries.len() >= self.max_entries {
            let soonest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(kid, _)| kid.clone());
            if let Some(kid) = soonest {
                self.entries.remove(&kid);
            }
        }
        self.entries.insert(key.kid.clone(), (key, until));
    }

    /// Records which kid is this PoP's current key (the key should be inserted too).
    pub fn set_current(&mut self, kid: &str) {
        self.current = Some(kid.to_owned());
    }

    /// The current key if it is cached, fresh, not revoked and not yet due for rotation;
    /// otherwise `None` and the shell reads `vault:current:<colo>` and decides.
    pub fn current(&self, now_ms: i64) -> Option<&DataKey> {
        let kid = self.current.as_deref()?;
        self.get(kid, now_ms)
            .filter(|k| !k.revoked && now_ms < k.rotate_after_ms)
    }

    /// Drops one kid (e.g. after the shell learnt it was revoked or deleted).
    pub fn remove(&mut self, kid: &str) {
        self.entries.remove(kid);
    }

    /// Drops every entry that is no longer fresh.
    pub fn evict_expired(&mut self, now_ms: i64) {
        self.entries.retain(|_, (_, until)| now_ms < *until);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{new_key_record, Kek, KekSet, KeyPolicy};

    fn key(kid: &str, now: i64) -> DataKey {
        let keks = KekSet::new(Kek::from_bytes([1; 32]), vec![]);
        new_key_record(kid, [2; 32], [3; 12], &keks, now, &KeyPolicy::default())
            .unwrap()
            .1
    }

    #[test]
    fn entries_expire_after_ttl_or_key_expiry() {
        let mut cache = KeyCache::new(60_000, 8);
        let k = key("dk_a", 0);
        cache.insert(k.clone(), 0);
        assert_eq!(cache.get("dk_a", 59_999), Some(&k));
        assert_eq!(cache.get("dk_a", 60_000), None);
        assert_eq!(cache.get("dk_b", 0), None);

        // Inserted a moment before the key expires: kept only until the key's expiry.
        let mut cache = KeyCache::new(60_000, 8);
        cache.insert(k.clone(), k.expires_ms - 10);
        assert!(cache.get("dk_a", k.expires_ms).is_some());
        assert!(cache.get("dk_a", k.expires_ms + 1).is_none());
    }

    #[test]
    fn current_is_refused_once_due_for_rotation() {
        let mut cache = KeyCache::new(10 * 60 * 60 * 1000, 8);
        let k = key("dk_a", 0);
        cache.insert(k.clone(), 0);
        assert!(cache.current(0).is_none(), "no current set yet");
        cache.set_current("dk_a");
        assert_eq!(cache.current(0).map(|k| k.kid.as_str()), Some("dk_a"));
        assert!(cache.current(k.rotate_after_ms - 1).is_some());
        assert!(cache.current(k.rotate_after_ms).is_none());
        // Still usable for detokenizing during the grace period.
        assert!(cache.get("dk_a", k.rotate_after_ms).is_some());
    }

    #[test]
    fn bounded_size_evicts_soonest_leaving() {
        let mut cache = KeyCache::new(60_000, 2);
        cache.insert(key("dk_a", 0), 0);
        cache.insert(key("dk_b", 0), 10);
        cache.insert(key("dk_c", 0), 20);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("dk_a", 20).is_none());
        assert!(cache.get("dk_b", 20).is_some());
        assert!(cache.get("dk_c", 20).is_some());
        cache.evict_expired(60_015);
        assert_eq!(cache.len(), 1);
        cache.remove("dk_c");
        assert!(cache.is_empty());
    }
}
