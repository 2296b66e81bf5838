//! Data keys, their KV records wrapped under a key-encryption key (KEK), KEK sets and
//! rotation decisions.

use super::aead::{associated_data, open, seal, NONCE_LEN, TAG_LEN};
use super::error::VaultError;
use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Workers KV refuses an `expiration_ttl` below 60 seconds.
pub const KV_MIN_TTL_SECS: u64 = 60;

const WRAP_LABEL: &str = "poptill/vault/data-key/v1";
const KEK_ID_LABEL: &[u8] = b"poptill/vault/kek-id/v1\0";

/// Whether `kid` is usable as a key id (also used for KEK ids): 1-64 characters of
/// `[A-Za-z0-9_-]`. Keeps KV keys and token bytes predictable.
pub fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 64
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How long a data key just written to KV may stay invisible in other locations: KV
/// documents up to about 60 seconds, with margin.
pub const KV_PROPAGATION_MS: i64 = 90_000;

/// A new data key's id: `dk_<colo>_<created unix seconds>_<16 hex>`. The creation time is
/// readable so that a PoP which cannot find the key yet can tell a fresh key (KV has not
/// propagated it: retry) from one that is gone (the token expired). `colo` is lower-cased
/// and cut to its letters and digits.
pub fn new_kid(colo: &str, created_ms: i64, random: [u8; 8]) -> String {
    let colo: String = colo
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase();
    let secs = created_ms.max(0) / 1000;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("dk_{colo}_{secs}_{hex}")
}

/// The creation time a kid made by [`new_kid`] carries; `None` for other kids (the older
/// `dk_<colo>_<hex>` form among them).
pub fn kid_created_ms(kid: &str) -> Option<i64> {
    let mut parts = kid.split('_');
    let (Some("dk"), Some(_colo), Some(secs), Some(hex), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || hex.len() != 16 {
        return None;
    }
    secs.parse::<i64>().ok()?.checked_mul(1000)
}

/// What a token read answers when its key's record is not in KV. A key made less than
/// [`KV_PROPAGATION_MS`] ago (or stamped a little in the future, by a PoP whose clock runs
/// ahead) may simply not have reached this location yet: [`VaultError::KeyNotYetVisible`]
/// (503 `temporarily_unavailable`, retryable), which the checkout does not store as the
/// request's answer. Any other miss means the record is gone (its key expired, so every
/// token under it has too): `token_expired` (410).
pub fn missing_key_error(kid: &str, now_ms: i64) -> VaultError {
    match kid_created_ms(kid) {
        Some(created)
            if created > now_ms.saturating_sub(KV_PROPAGATION_MS)
                && created <= now_ms.saturating_add(5 * 60_000) =>
        {
            VaultError::KeyNotYetVisible
        }
        _ => VaultError::TokenExpired,
    }
}

/// How often a PoP starts a new data key, and how long an old key keeps opening tokens
/// after that. A token minted with ttl <= `grace_ms` is never shredded before its own
/// expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    pub rotate_every_ms: i64,
    pub grace_ms: i64,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        KeyPolicy {
            rotate_every_ms: 15 * 60 * 1000,
            grace_ms: 60 * 60 * 1000,
        }
    }
}

/// One key-encryption key: an id (stored in each record it wraps) and 32 secret bytes.
#[derive(Debug, Clone)]
pub struct Kek {
    pub id: String,
    key: Secret<[u8; 32]>,
}

impl Kek {
    /// The key bytes, for wrapping inside the crate.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        self.key.expose()
    }

    /// A KEK with an explicit id (must pass [`valid_kid`]).
    pub fn new(id: &str, key: [u8; 32]) -> Result<Kek, VaultError> {
        if !valid_kid(id) {
            return Err(VaultError::InvalidKid);
        }
        Ok(Kek {
            id: id.to_owned(),
            key: Secret::new(key),
        })
    }

    /// A KEK whose id is derived from the key: `kek_` + 16 hex digits of a SHA-256 over a
    /// label and the key. Reveals nothing usable about the key, and changes when it does.
    pub fn from_bytes(key: [u8; 32]) -> Kek {
        Kek {
            id: kek_id_for(&key),
            key: Secret::new(key),
        }
    }

    /// Parses one secret value: base64 or base64url (padding optional) of exactly 32
    /// bytes, optionally prefixed by `<id>:` to choose the id. `which` names the secret
    /// in errors; the value itself never appears in them.
    pub fn parse(value: &str, which: &str) -> Result<Kek, VaultError> {
        let bad = |reason| VaultError::KekMisconfigured {
            which: which.to_owned(),
            reason,
        };
        let value = value.trim();
        let (id, encoded) = match value.split_once(':') {
            Some((id, rest)) => (Some(id.trim()), rest.trim()),
            None => (None, value),
        };
        if encoded.is_empty() {
            return Err(bad("it is empty"));
        }
        let mut normalized = Zeroizing::new(String::with_capacity(encoded.len()));
        for c in encoded.trim_end_matches('=').chars() {
            normalized.push(match c {
                '+' => '-',
                '/' => '_',
                other => other,
            });
        }
        let bytes = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(normalized.as_bytes())
                .map_err(|_| bad("it is not base64 or base64url"))?,
        );
        let mut key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| bad("it must decode to exactly 32 bytes"))?;
        let kek = match id {
            Some(id) if !valid_kid(id) => Err(bad("its id (before ':') must be [A-Za-z0-9_-]")),
            Some(id) => Kek::new(id, key),
            None => Ok(Kek::from_bytes(key)),
        };
        key.zeroize();
        kek
    }
}

/// The id derived for a KEK by [`Kek::from_bytes`].
pub fn kek_id_for(key: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(KEK_ID_LABEL)
        .chain_update(key)
        .finalize();
    format!("kek_{}", hex::encode(digest.get(..8).unwrap_or_default()))
}

/// The KEKs this isolate knows: `current` wraps new records; `previous` only unwraps,
/// so records wrapped under a retired KEK keep working until they are rewrapped.
#[derive(Debug, Clone)]
pub struct KekSet {
    pub current: Kek,
    pub previous: Vec<Kek>,
}

impl KekSet {
    pub fn new(current: Kek, previous: Vec<Kek>) -> KekSet {
        let previous = previous
            .into_iter()
            .filter(|k| k.id != current.id)
            .collect();
        KekSet { current, previous }
    }

    /// From the Worker secrets: `current` is `VAULT_KEK`; `previous` is the optional
    /// `VAULT_KEK_PREVIOUS`, any number of entries separated by commas or whitespace.
    /// Each entry is `[<id>:]<base64 or base64url of 32 bytes>`.
    pub fn parse(current: &str, previous: Option<&str>) -> Result<KekSet, VaultError> {
        let current = Kek::parse(current, "VAULT_KEK")?;
        let previous = previous
            .unwrap_or("")
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| Kek::parse(s, "VAULT_KEK_PREVIOUS"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KekSet::new(current, previous))
    }

    /// The KEK with this id, current or previous.
    pub fn find(&self, kek_id: &str) -> Option<&Kek> {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|k| k.id == kek_id)
    }
}

/// A data key as stored in KV at `vault:key:<kid>`: the key itself only wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub kid: String,
    pub kek_id: String,
    pub created_ms: i64,
    /// From this instant the PoP should start a new key (still opens tokens).
    pub rotate_after_ms: i64,
    /// After this instant the key opens nothing; KV deletes the record soon after.
    pub expires_ms: i64,
    pub revoked: bool,
    /// base64url (no padding) of nonce (12) | ChaCha20-Poly1305(key) (32) | tag (16).
    pub wrapped_b64: String,
}

impl KeyRecord {
    /// The `expiration_ttl` (seconds) to write this record (and a pointer to it) with:
    /// until one second past `expires_ms` (rounded up, so KV never deletes it while it
    /// still opens tokens), never below KV's minimum of 60 s.
    pub fn kv_expiration_ttl_secs(&self, now_ms: i64) -> u64 {
        let remaining_ms = self.expires_ms.saturating_sub(now_ms).max(0);
        let secs = u64::try_from(remaining_ms).unwrap_or(0).div_ceil(1000) + 1;
        secs.max(KV_MIN_TTL_SECS)
    }

    /// Marks the key revoked: detokenize then answers `key_revoked` for its tokens. The
    /// shell writes the record back (or deletes it to shred at once).
    pub fn revoke(&mut self) {
        self.revoked = true;
    }

    fn wrap_aad(&self) -> Vec<u8> {
        associated_data(
            WRAP_LABEL,
            &[
                self.kid.as_bytes(),
                self.kek_id.as_bytes(),
                &self.created_ms.to_be_bytes(),
                &self.rotate_after_ms.to_be_bytes(),
                &self.expires_ms.to_be_bytes(),
            ],
        )
    }
}

/// An unwrapped data key with the record facts the vault decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKey {
    pub kid: String,
    key: Secret<[u8; 32]>,
    pub rotate_after_ms: i64,
    pub expires_ms: i64,
    pub revoked: bool,
}

impl DataKey {
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        self.key.expose()
    }

    /// Whether new tokens may be sealed under this key at `now_ms`.
    pub fn usable_for_new_tokens(&self, now_ms: i64) -> bool {
        !self.revoked && now_ms <= self.expires_ms
    }
}

/// Whether the PoP should start a new data key: there is none, it is revoked, or its
/// `rotate_after_ms` has come.
pub fn needs_rotation(current: Option<&KeyRecord>, now_ms: i64) -> bool {
    match current {
        None => true,
        Some(record) => record.revoked || now_ms >= record.rotate_after_ms,
    }
}

/// Makes a new data key from 32 random bytes and wraps it under the current KEK with a
/// random 12-byte nonce. Returns the record to put in KV and the key ready for use.
pub fn new_key_record(
    kid: &str,
    key_bytes: [u8; 32],
    wrap_nonce: [u8; NONCE_LEN],
    keks: &KekSet,
    now_ms: i64,
    policy: &KeyPolicy,
) -> Result<(KeyRecord, DataKey), VaultError> {
    if !valid_kid(kid) {
        return Err(VaultError::InvalidKid);
    }
    let key = Secret::new(key_bytes);
    let rotate_after_ms = now_ms.saturating_add(policy.rotate_every_ms.max(1));
    let expires_ms = rotate_after_ms.saturating_add(policy.grace_ms.max(0));
    let mut record = KeyRecord {
        kid: kid.to_owned(),
        kek_id: String::new(),
        created_ms: now_ms,
        rotate_after_ms,
        expires_ms,
        revoked: false,
        wrapped_b64: String::new(),
    };
    wrap_into(&mut record, key.expose(), &keks.current, &wrap_nonce)?;
    let data_key = DataKey {
        kid: record.kid.clone(),
        key,
        rotate_after_ms,
        expires_ms,
        revoked: false,
    };
    Ok((record, data_key))
}

fn wrap_into(
    record: &mut KeyRecord,
    key: &[u8; 32],
    kek: &Kek,
    nonce: &[u8; NONCE_LEN],
) -> Result<(), VaultError> {
    record.kek_id = kek.id.clone();
    let sealed = seal(kek.key.expose(), nonce, &record.wrap_aad(), key)
        .map_err(|_| VaultError::SealFailed)?;
    let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
    blob.extend_from_slice(nonce);
    blob.extend_from_slice(&sealed);
    record.wrapped_b64 = URL_SAFE_NO_PAD.encode(blob);
    Ok(())
}

/// Unwraps a record with the KEK named by its `kek_id`. Does not judge expiry or
/// revocation (the flags are copied into the [`DataKey`]; [`super::detokenize`] decides).
pub fn unwrap_key(record: &KeyRecord, keks: &KekSet) -> Result<DataKey, VaultError> {
    if !valid_kid(&record.kid) {
        return Err(VaultError::InvalidKid);
    }
    let kek = keks
        .find(&record.kek_id)
        .ok_or_else(|| VaultError::KekUnknown {
            kek_id: record.kek_id.clone(),
        })?;
    let corrupt = || VaultError::KeyRecordCorrupt {
        kid: record.kid.clone(),
    };
    let blob = URL_SAFE_NO_PAD
        .decode(record.wrapped_b64.as_bytes())
        .map_err(|_| corrupt())?;
    if blob.len() != NONCE_LEN + 32 + TAG_LEN {
        return Err(corrupt());
    }
    let (nonce, sealed) = blob.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| corrupt())?;
    let plain =
        open(kek.key.expose(), &nonce, &record.wrap_aad(), sealed).map_err(|_| corrupt())?;
    let key: [u8; 32] = plain.as_slice().try_into().map_err(|_| corrupt())?;
    Ok(DataKey {
        kid: record.kid.clone(),
        key: Secret::new(key),
        rotate_after_ms: record.rotate_after_ms,
        expires_ms: record.expires_ms,
        revoked: record.revoked,
    })
}

/// Whether a record is wrapped under a KEK other than the current one.
pub fn needs_rewrap(record: &KeyRecord, keks: &KekSet) -> bool {
    record.kek_id != keks.current.id
}

/// Re-wraps a record under the current KEK (for master-key rotation), keeping its kid,
/// times and flags, so tokens sealed under it keep working after the old KEK is retired.
/// `nonce` must be fresh random bytes.
pub fn rewrap(
    record: &KeyRecord,
    keks: &KekSet,
    nonce: [u8; NONCE_LEN],
) -> Result<KeyRecord, VaultError> {
    let key = unwrap_key(record, keks)?;
    let mut out = record.clone();
    wrap_into(&mut out, key.bytes(), &keks.current, &nonce)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    const T0: i64 = 1_907_712_000_000;

    fn keks() -> KekSet {
        KekSet::new(Kek::from_bytes([7; 32]), vec![])
    }

    #[test]
    fn policy_defaults_and_record_times() {
        let p = KeyPolicy::default();
        assert_eq!(p.rotate_every_ms, 900_000);
        assert_eq!(p.grace_ms, 3_600_000);
        let (rec, key) = new_key_record("dk_ams_01", [1; 32], [2; 12], &keks(), T0, &p).unwrap();
        assert_eq!(rec.created_ms, T0);
        assert_eq!(rec.rotate_after_ms, T0 + 900_000);
        assert_eq!(rec.expires_ms, T0 + 900_000 + 3_600_000);
        assert_eq!(key.expires_ms, rec.expires_ms);
        assert_eq!(rec.kek_id, keks().current.id);
        assert!(!rec.wrapped_b64.contains(&URL_SAFE_NO_PAD.encode([1u8; 32])));
    }

    #[test]
    fn kv_ttl_rounds_up_and_respects_minimum() {
        let (rec, _) =
            new_key_record("dk_a", [1; 32], [2; 12], &keks(), T0, &KeyPolicy::default()).unwrap();
        assert_eq!(rec.kv_expiration_ttl_secs(T0), 4501);
        assert_eq!(rec.kv_expiration_ttl_secs(T0 + 1), 4501);
        assert_eq!(rec.kv_expiration_ttl_secs(T0 + 1000), 4500);
        assert_eq!(rec.kv_expiration_ttl_secs(rec.expires_ms - 30_000), 60);
        assert_eq!(rec.kv_expiration_ttl_secs(rec.expires_ms + 5_000_000), 60);
        assert_eq!(rec.kv_expiration_ttl_secs(rec.expires_ms - 61_000), 62);
        // KV keeps the record past the last instant it opens tokens.
        for now in [T0, T0 + 1, T0 + 999, rec.expires_ms - 100_001] {
            let gone = now + rec.kv_expiration_ttl_secs(now) as i64 * 1000;
            assert!(gone > rec.expires_ms, "{now}");
        }
    }

    #[test]
    fn record_round_trips_through_json_and_unwraps() {
        let (rec, key) =
            new_key_record("dk_a", [9; 32], [3; 12], &keks(), T0, &KeyPolicy::default()).unwrap();
        let json = serde_json::to_string(&rec).unwrap();
        let back: KeyRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        let opened = unwrap_key(&back, &keks()).unwrap();
        assert_eq!(opened, key);
        assert_eq!(opened.bytes(), &[9; 32]);
    }

    #[test]
    fn edited_record_fails_to_unwrap() {
        let (rec, _) =
            new_key_record("dk_a", [9; 32], [3; 12], &keks(), T0, &KeyPolicy::default()).unwrap();
        let mut later = rec.clone();
        later.expires_ms += 1;
        assert!(matches!(
            unwrap_key(&later, &keks()),
            Err(VaultError::KeyRecordCorrupt { .. })
        ));
        let mut renamed = rec.clone();
        renamed.kid = "dk_b".into();
        assert!(matches!(
            unwrap_key(&renamed, &keks()),
            Err(VaultError::KeyRecordCorrupt { .. })
        ));
        let mut other_kek = rec.clone();
        other_kek.kek_id = "kek_other".into();
        assert!(matches!(
            unwrap_key(&other_kek, &keks()),
            Err(VaultError::KekUnknown { .. })
        ));
        let mut garbage = rec.clone();
        garbage.wrapped_b64 = "!!".into();
        assert!(matches!(
            unwrap_key(&garbage, &keks()),
            Err(VaultError::KeyRecordCorrupt { .. })
        ));
        // Revoking changes only the flag, which is not bound: it still unwraps.
        let mut revoked = rec;
        revoked.revoke();
        assert!(unwrap_key(&revoked, &keks()).unwrap().revoked);
    }

    #[test]
    fn needs_rotation_decisions() {
        let (rec, _) =
            new_key_record("dk_a", [9; 32], [3; 12], &keks(), T0, &KeyPolicy::default()).unwrap();
        assert!(needs_rotation(None, T0));
        assert!(!needs_rotation(Some(&rec), T0));
        assert!(!needs_rotation(Some(&rec), rec.rotate_after_ms - 1));
        assert!(needs_rotation(Some(&rec), rec.rotate_after_ms));
        let mut revoked = rec;
        revoked.revoke();
        assert!(needs_rotation(Some(&revoked), T0));
    }

    #[test]
    fn kek_parsing_accepts_base64_variants_and_refuses_others() {
        let bytes: Vec<u8> = (0u8..32)
            .map(|i| i.wrapping_mul(37).wrapping_add(250))
            .collect();
        let want = kek_id_for(&bytes.clone().try_into().unwrap());
        for encoded in [
            STANDARD.encode(&bytes),
            URL_SAFE.encode(&bytes),
            URL_SAFE_NO_PAD.encode(&bytes),
            format!("  {}\n", STANDARD.encode(&bytes)),
        ] {
            let kek = Kek::parse(&encoded, "VAULT_KEK").unwrap();
            assert_eq!(kek.id, want, "{encoded}");
            assert_eq!(kek.key.expose().as_slice(), bytes.as_slice());
        }
        let named = Kek::parse(&format!("k2025:{}", STANDARD.encode(&bytes)), "X").unwrap();
        assert_eq!(named.id, "k2025");

        let secret_31 = STANDARD.encode([5u8; 31]);
        let secret_33 = URL_SAFE_NO_PAD.encode([5u8; 33]);
        for bad in [
            "".to_string(),
            "not base64 at all!".to_string(),
            secret_31.clone(),
            secret_33.clone(),
            format!("bad id:{}", STANDARD.encode(&bytes)),
        ] {
            let err = Kek::parse(&bad, "VAULT_KEK").unwrap_err();
            let VaultError::KekMisconfigured { which, .. } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(which, "VAULT_KEK");
            let shown = format!("{err} {err:?} {}", err.to_api().body());
            if bad.len() > 4 {
                assert!(!shown.contains(&bad), "{shown}");
            }
        }
        assert!(Kek::parse(&secret_31, "X")
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
    }

    #[test]
    fn kek_set_parses_previous_list() {
        let a = URL_SAFE_NO_PAD.encode([1u8; 32]);
        let b = STANDARD.encode([2u8; 32]);
        let c = URL_SAFE_NO_PAD.encode([3u8; 32]);
        let set = KekSet::parse(&a, Some(&format!("{b}, {c}\n{a}"))).unwrap();
        assert_eq!(set.current.id, kek_id_for(&[1; 32]));
        assert_eq!(set.previous.len(), 2, "current is not repeated in previous");
        assert!(set.find(&kek_id_for(&[3; 32])).is_some());
        assert!(set.find("kek_nope").is_none());
        assert_eq!(KekSet::parse(&a, None).unwrap().previous.len(), 0);
        let err = KekSet::parse(&a, Some("short")).unwrap_err();
        assert!(
            matches!(err, VaultError::KekMisconfigured { ref which, .. } if which == "VAULT_KEK_PREVIOUS")
        );
    }

    #[test]
    fn debug_of_keys_never_shows_key_bytes() {
        let bytes = [0xAB; 32];
        let set = KekSet::new(Kek::from_bytes(bytes), vec![Kek::from_bytes([0xCD; 32])]);
        let (_, key) =
            new_key_record("dk_a", [0xEF; 32], [0; 12], &set, T0, &KeyPolicy::default()).unwrap();
        let text = format!("{set:?} {set:#?} {key:?} {key:#?}");
        for needle in ["171, 171", "205, 205", "239, 239", "abab", "cdcd", "efef"] {
            assert!(!text.to_lowercase().contains(needle), "{needle} in {text}");
        }
        assert!(text.contains("Secret(***)"));
    }

    #[test]
    fn rewrap_moves_record_to_new_kek_and_old_kek_can_be_retired() {
        let old = KekSet::new(Kek::from_bytes([1; 32]), vec![]);
        let (rec, key) =
            new_key_record("dk_a", [9; 32], [3; 12], &old, T0, &KeyPolicy::default()).unwrap();
        // Rotation window: new current, old still known.
        let both = KekSet::new(Kek::from_bytes([2; 32]), vec![Kek::from_bytes([1; 32])]);
        assert!(needs_rewrap(&rec, &both));
        let moved = rewrap(&rec, &both, [4; 12]).unwrap();
        assert!(!needs_rewrap(&moved, &both));
        assert_eq!(moved.kek_id, both.current.id);
        assert_eq!(
            (moved.kid.as_str(), moved.created_ms, moved.expires_ms),
            (rec.kid.as_str(), rec.created_ms, rec.expires_ms)
        );
        // Old KEK retired.
        let new_only = KekSet::new(Kek::from_bytes([2; 32]), vec![]);
        assert_eq!(unwrap_key(&moved, &new_only).unwrap(), key);
        assert!(matches!(
            unwrap_key(&rec, &new_only),
            Err(VaultError::KekUnknown { .. })
        ));
    }

    #[test]
    fn kids_carry_their_creation_time() {
        let kid = new_kid("DFW", T0 + 999, [0xab; 8]);
        assert_eq!(kid, format!("dk_dfw_{}_abababababababab", T0 / 1000));
        assert!(valid_kid(&kid));
        assert_eq!(kid_created_ms(&kid), Some(T0));
        // A colo with odd characters is cut to what a kid allows.
        let odd = new_kid("L-O_C al", T0, [1; 8]);
        assert!(valid_kid(&odd), "{odd}");
        assert_eq!(kid_created_ms(&odd), Some(T0));
        // Older kids and anything else carry no time.
        for other in [
            "dk_dfw_0123456789abcdef",
            "dk_a",
            "dk_dfw_12x_0123456789abcdef",
            "xx_dfw_1_0123456789abcdef",
            "dk_dfw__0123456789abcdef",
            "dk_dfw_1_0123_extra",
        ] {
            assert_eq!(kid_created_ms(other), None, "{other}");
        }
    }

    #[test]
    fn a_missing_key_is_retryable_only_while_it_may_still_be_propagating() {
        let kid = new_kid("ams", T0, [2; 8]);
        // Minted elsewhere a moment ago: not visible here yet, try again (503, retryable).
        for now in [T0, T0 + 1_000, T0 + KV_PROPAGATION_MS - 1_000] {
            let e = missing_key_error(&kid, now);
            assert_eq!(e, VaultError::KeyNotYetVisible, "{now}");
            let api = e.to_api();
            assert_eq!(
                (api.status, api.code.as_ref(), api.retryable),
                (503, "temporarily_unavailable", true)
            );
        }
        // A PoP whose clock is a little behind the minting one still waits.
        assert_eq!(
            missing_key_error(&kid, T0 - 30_000),
            VaultError::KeyNotYetVisible
        );
        // Long enough for KV to have it everywhere: the record is gone for good (410).
        for now in [T0 + KV_PROPAGATION_MS, T0 + 3_600_000] {
            let e = missing_key_error(&kid, now);
            assert_eq!(e, VaultError::TokenExpired, "{now}");
            assert_eq!(e.to_api().status, 410);
        }
        // A kid stamped far in the future is not believed; neither is a kid without a time.
        assert_eq!(
            missing_key_error(&kid, T0 - 3_600_000),
            VaultError::TokenExpired
        );
        assert_eq!(
            missing_key_error("dk_ams_0123456789abcdef", T0),
            VaultError::TokenExpired
        );
    }
}
