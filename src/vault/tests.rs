//! Whole-vault tests: binding, tampering, rotation with a fake clock, expiry, revocation,
//! KEK rotation, CVC single use and masking.

use super::*;
use crate::card::{Brand, Card, Expiry};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// 2030-06-15T00:00:00Z.
const T0: i64 = 1_907_712_000_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

const BINDING: TokenBinding<'static> = TokenBinding {
    merchant_id: "mer_1",
    event_id: "evt_1",
    purpose: "payment",
};

/// Deterministic "random" bytes for tests: SHA-256 of a label and a counter.
struct FakeRng(u64);

impl FakeRng {
    fn bytes32(&mut self) -> [u8; 32] {
        self.0 += 1;
        Sha256::digest(self.0.to_be_bytes()).into()
    }
    fn nonce(&mut self) -> [u8; 12] {
        self.bytes32()[..12].try_into().unwrap()
    }
}

fn keks() -> KekSet {
    KekSet::new(Kek::from_bytes([0x11; 32]), vec![])
}

fn card(number: &str, cvc: Option<&str>) -> Card {
    Card::parse(number, Expiry::new(12, 2031).unwrap(), cvc, T0).unwrap()
}

fn fresh_key(kid: &str, now: i64, rng: &mut FakeRng) -> (KeyRecord, DataKey) {
    new_key_record(
        kid,
        rng.bytes32(),
        rng.nonce(),
        &keks(),
        now,
        &KeyPolicy::default(),
    )
    .unwrap()
}

#[test]
fn every_test_card_round_trips() {
    let mut rng = FakeRng(0);
    let (_, key) = fresh_key("dk_ams_0001", T0, &mut rng);
    let table = [
        ("4242424242424242", Brand::Visa),
        ("5555555555554444", Brand::Mastercard),
        ("2223003122003222", Brand::Mastercard),
        ("378282246310005", Brand::Amex),
        ("6011111111111117", Brand::Discover),
        ("3566002020360505", Brand::Jcb),
        ("36227206271667", Brand::Diners),
        ("6200000000000005", Brand::UnionPay),
    ];
    let mut lengths = std::collections::HashSet::new();
    for (number, brand) in table {
        let c = card(number, None);
        let t = tokenize(&c, &BINDING, &key, rng.nonce(), T0, 10 * MIN).unwrap();
        assert!(t.token.starts_with("tok_"));
        assert_eq!(t.brand, brand);
        assert_eq!(t.last4, &number[number.len() - 4..]);
        assert_eq!((t.exp_month, t.exp_year), (12, 2031));
        assert_eq!(t.expires_at_ms, T0 + 10 * MIN);
        assert!(!t.token.contains(number));
        assert!(!t.token.contains(&number[..6]));
        assert!(!t.token.contains(&t.last4));
        lengths.insert(t.token.len());
        assert_eq!(token_kid(&t.token).unwrap(), "dk_ams_0001");
        let back = detokenize(&t.token, &BINDING, |_| Some(&key), T0 + 5 * MIN).unwrap();
        assert_eq!(back.number().expose(), number);
        assert_eq!(back.brand(), brand);
        assert_eq!(back.expiry(), Expiry::new(12, 2031).unwrap());
        assert!(back.cvc().is_none());
    }
    assert_eq!(
        lengths.len(),
        1,
        "token length must not reveal the number length"
    );
}

#[test]
fn token_plaintext_does_not_appear_in_token_bytes() {
    let mut rng = FakeRng(1);
    let (_, key) = fresh_key("dk_a", T0, &mut rng);
    let t = tokenize(
        &card("4242424242424242", None),
        &BINDING,
        &key,
        rng.nonce(),
        T0,
        MIN,
    )
    .unwrap();
    let raw = URL_SAFE_NO_PAD.decode(&t.token[4..]).unwrap();
    let hay = String::from_utf8_lossy(&raw);
    assert!(!hay.contains("4242"), "{hay}");
    // Layout: version, kid length, kid, nonce, 31 sealed bytes + 16 tag.
    assert_eq!(raw.len(), 2 + 4 + 12 + 31 + 16);
}

#[test]
fn wrong_merchant_event_or_purpose_is_invalid_token() {
    let mut rng = FakeRng(2);
    let (_, key) = fresh_key("dk_a", T0, &mut rng);
    let t = tokenize(
        &card("4242424242424242", None),
        &BINDING,
        &key,
        rng.nonce(),
        T0,
        HOUR,
    )
    .unwrap();
    let others = [
        TokenBinding {
            merchant_id: "mer_2",
            ..BINDING
        },
        TokenBinding {
            event_id: "evt_2",
            ..BINDING
        },
        TokenBinding {
            purpose: "refund",
            ..BINDING
        },
        // Shifting characters between fields must not collide.
        TokenBinding {
            merchant_id: "mer_1e",
            event_id: "vt_1",
            purpose: "payment",
        },
    ];
    for other in others {
        let err = detokenize(&t.token, &other, |_| Some(&key), T0).unwrap_err();
        assert_eq!(err, VaultError::InvalidToken, "{other:?}");
        assert_eq!(err.to_api().code, "invalid_token");
    }
    assert!(detokenize(&t.token, &BINDING, |_| Some(&key), T0).is_ok());
}

#[test]
fn wrong_key_or_key_for_another_kid_is_invalid_token() {
    let mut rng = FakeRng(3);
    let (_, key) = fresh_key("dk_a", T0, &mut rng);
    let (_, other_same_kid) = fresh_key("dk_a", T0, &mut rng);
    let (_, other_kid) = fresh_key("dk_b", T0, &mut rng);
    let t = tokenize(
        &card("4242424242424242", None),
        &BINDING,
        &key,
        rng.nonce(),
        T0,
        HOUR,
    )
    .unwrap();
    assert_eq!(
        detokenize(&t.token, &BINDING, |_| Some(&other_same_kid), T0),
        Err(VaultError::InvalidToken)
    );
    assert_eq!(
        detokenize(&t.token, &BINDING, |_| Some(&other_kid), T0),
        Err(VaultError::InvalidToken)
    );
}

/// Flips every bit of the decoded token bytes, and every bit of the token string, and
/// checks each result is refused. Outside the kid every refusal is `invalid_token`; a
/// changed kid may also find no key (`token_expired`, which is what a deleted key gives).
#[test]
fn flipping_any_single_bit_is_rejected() {
    let mut rng = FakeRng(4);
    let (_, key) = fresh_key("dk_ams_0001", T0, &mut rng);
    let lookup = |kid: &str| (kid == key.kid).then_some(&key);
    let t = tokenize(
        &card("4242424242424242", None),
        &BINDING,
        &key,
        rng.nonce(),
        T0,
        HOUR,
    )
    .unwrap();
    assert!(detokenize(&t.token, &BINDING, lookup, T0).is_ok());

    let raw = URL_SAFE_NO_PAD.decode(&t.token[4..]).unwrap();
    let kid_bytes = 2..2 + key.kid.len();
    let mut checked = 0;
    for i in 0..raw.len() {
        for bit in 0..8 {
            let mut bytes = raw.clone();
            bytes[i] ^= 1 << bit;
            let tampered = format!("tok_{}", URL_SAFE_NO_PAD.encode(&bytes));
            let err = detokenize(&tampered, &BINDING, lookup, T0).unwrap_err();
            if kid_bytes.contains(&i) {
                assert!(
                    matches!(err, VaultError::InvalidToken | VaultError::TokenExpired),
                    "byte {i} bit {bit}: {err:?}"
                );
            } else {
                assert_eq!(err, VaultError::InvalidToken, "byte {i} bit {bit}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, raw.len() * 8);

    // The string itself, prefix included (non-UTF-8 results become U+FFFD, as a shell
    // decoding a request body lossily would pass them).
    let text = t.token.as_bytes();
    for i in 0..text.len() {
        for bit in 0..8 {
            let mut bytes = text.to_vec();
            bytes[i] ^= 1 << bit;
            let tampered = String::from_utf8_lossy(&bytes).into_owned();
            assert!(
                detokenize(&tampered, &BINDING, lookup, T0).is_err(),
                "char {i} bit {bit}: {tampered}"
            );
        }
    }
}

#[test]
fn malformed_tokens_are_invalid_without_panicking() {
    let mut rng = FakeRng(5);
    let (_, key) = fresh_key("dk_a", T0, &mut rng);
    let long = format!("tok_{}", "A".repeat(10_000));
    let inputs = [
        "",
        "tok_",
        "tok",
        "tok_AQ",
        "tok_AQEx",
        "cvt_AAAA",
        "tok_====",
        "tok_AQ-",
        "TOK_AQ",
        "tok_ä",
        long.as_str(),
    ];
    for input in inputs {
        assert_eq!(
            detokenize(input, &BINDING, |_| Some(&key), T0),
            Err(VaultError::InvalidToken),
            "{input:?}"
        );
        assert!(token_kid(input).is_err());
    }
    // A CVC token is not a card token and vice versa.
    let c = card("4242424242424242", Some("123"));
    let t = tokenize(&c, &BINDING, &key, rng.nonce(), T0, HOUR).unwrap();
    let v = tokenize_cvc(&c, &t.token, &BINDING, &key, rng.nonce(), T0, HOUR).unwrap();
    let as_card = v.token.replacen("cvt_", "tok_", 1);
    assert_eq!(
        detokenize(&as_card, &BINDING, |_| Some(&key), T0),
        Err(VaultError::InvalidToken)
    );
    let as_cvc = t.token.replacen("tok_", "cvt_", 1);
    assert_eq!(
        detokenize_cvc(&as_cvc, &t.token, &BINDING, |_| Some(&key), T0),
        Err(VaultError::InvalidToken)
    );
}

#[test]
fn token_expiry_and_key_expiry() {
    let mut rng = FakeRng(6);
    let (record, key) = fresh_key("dk_a", T0, &mut rng);
    let c = card("5555555555554444", None);
    let t = tokenize(&c, &BINDING, &key, rng.nonce(), T0, 10 * MIN).unwrap();
    assert!(detokenize(&t.token, &BINDING, |_| Some(&key), T0 + 10 * MIN).is_ok());
    assert_eq!(
        detokenize(&t.token, &BINDING, |_| Some(&key), T0 + 10 * MIN + 1),
        Err(VaultError::TokenExpired)
    );

    // A ttl longer than the key's life is cut to the key's expiry.
    let long = tokenize(&c, &BINDING, &key, rng.nonce(), T0, 24 * HOUR).unwrap();
    assert_eq!(long.expires_at_ms, record.expires_ms);
    assert!(detokenize(&long.token, &BINDING, |_| Some(&key), record.expires_ms).is_ok());
    // Key expired (even if some isolate still holds it): shredded.
    assert_eq!(
        detokenize(&long.token, &BINDING, |_| Some(&key), record.expires_ms + 1),
        Err(VaultError::TokenExpired)
    );
    // Record gone from KV.
    assert_eq!(
        detokenize(&long.token, &BINDING, |_| None, T0),
        Err(VaultError::TokenExpired)
    );
    // No new tokens under an expired key.
    assert_eq!(
        tokenize(&c, &BINDING, &key, rng.nonce(), record.expires_ms + 1, MIN),
        Err(VaultError::KeyUnusable { kid: "dk_a".into() })
    );
    assert_eq!(VaultError::TokenExpired.to_api().status, 410);
}

#[test]
fn revocation_answers_key_revoked() {
    let mut rng = FakeRng(7);
    let (mut record, key) = fresh_key("dk_a", T0, &mut rng);
    let c = card("378282246310005", Some("1234"));
    let t = tokenize(&c, &BINDING, &key, rng.nonce(), T0, HOUR).unwrap();
    let v = tokenize_cvc(&c, &t.token, &BINDING, &key, rng.nonce(), T0, HOUR).unwrap();
    record.revoke();
    // The shell reloads the record from KV and unwraps it.
    let revoked = unwrap_key(&record, &keks()).unwrap();
    assert_eq!(
        detokenize(&t.token, &BINDING, |_| Some(&revoked), T0 + MIN),
        Err(VaultError::KeyRevoked)
    );
    assert_eq!(
        detokenize_cvc(&v.token, &t.token, &BINDING, |_| Some(&revoked), T0 + MIN),
        Err(VaultError::KeyRevoked)
    );
    assert!(needs_rotation(Some(&record), T0 + MIN));
    assert!(matches!(
        tokenize(&c, &BINDING, &revoked, rng.nonce(), T0 + MIN, HOUR),
        Err(VaultError::KeyUnusable { .. })
    ));
    assert_eq!(VaultError::KeyRevoked.to_api().code, "key_revoked");
}

#[test]
fn cvc_token_is_bound_single_use_and_short_lived() {
    let mut rng = FakeRng(8);
    let (_, key) = fresh_key("dk_a", T0, &mut rng);
    let c = card("378282246310005", Some("1234"));
    let t = tokenize(&c, &BINDING, &key, rng.nonce(), T0, HOUR).unwrap();
    let v = tokenize_cvc(&c, &t.token, &BINDING, &key, rng.nonce(), T0, 24 * HOUR).unwrap();
    assert!(v.token.starts_with("cvt_"));
    assert!(!v.token.contains("1234"));
    assert_eq!(v.expires_at_ms, T0 + CVC_MAX_TTL_MS, "capped at one hour");
    assert_eq!(token_kid(&v.token).unwrap(), "dk_a");

    let opened = detokenize_cvc(&v.token, &t.token, &BINDING, |_| Some(&key), T0 + MIN).unwrap();
    assert_eq!(opened.cvc.expose(), "1234");
    assert_eq!(opened.use_id, v.use_id);
    assert_eq!(opened.use_id, cvc_use_id(&v.token));
    assert!(opened.use_id.starts_with("cvu_"));
    assert!(!format!("{opened:?}").contains("1234"));

    // Single use, as the event's Durable Object applies it.
    let mut ledger = CvcUseLedger::new();
    assert_eq!(
        ledger.try_use(&opened.use_id, opened.expires_at_ms, T0 + MIN),
        Ok(())
    );
    let again = detokenize_cvc(&v.token, &t.token, &BINDING, |_| Some(&key), T0 + 2 * MIN).unwrap();
    assert_eq!(
        ledger.try_use(&again.use_id, again.expires_at_ms, T0 + 2 * MIN),
        Err(VaultError::CvcAlreadyUsed)
    );
    assert_eq!(VaultError::CvcAlreadyUsed.to_api().status, 409);
    // Another CVC token for the same card has its own use id.
    let v2 = tokenize_cvc(&c, &t.token, &BINDING, &key, rng.nonce(), T0, HOUR).unwrap();
    assert_ne!(v2.use_id, v.use_id);
    assert_eq!(
        ledger.try_use(&v2.use_id, v2.expires_at_ms, T0 + 2 * MIN),
        Ok(())
    );
    // Entries are forgotten once their tokens expire, and the token is refused then.
    ledger.prune(T0 + CVC_MAX_TTL_MS + 1);
    assert!(ledger.is_empty());
    assert_eq!(
        detokenize_cvc(
            &v.token,
            &t.token,
            &BINDING,
            |_| Some(&key),
            T0 + CVC_MAX_TTL_MS + 1
        ),
        Err(VaultError::TokenExpired)
    );

    // Bound to its card token, merchant, event and purpose.
    let t_other = tokenize(&c, &BINDING, &key, rng.nonce(), T0, HOUR).unwrap();
    assert_eq!(
        detokenize_cvc(&v.token, &t_other.token, &BINDING, |_| Some(&key), T0),
        Err(VaultError::InvalidToken)
    );
    let other_event = TokenBinding {
        event_id: "evt_2",
        ..BINDING
    };
    assert_eq!(
        detokenize_cvc(&v.token, &t.token, &other_event, |_| Some(&key), T0),
        Err(VaultError::InvalidToken)
    );

    // Every single-bit flip of a CVC token is refused.
    let raw = URL_SAFE_NO_PAD.decode(&v.token[4..]).unwrap();
    for i in 0..raw.len() {
        for bit in 0..8 {
            let mut bytes = raw.clone();
            bytes[i] ^= 1 << bit;
            let tampered = format!("cvt_{}", URL_SAFE_NO_PAD.encode(&bytes));
            assert!(detokenize_cvc(
                &tampered,
                &t.token,
                &BINDING,
                |k| (k == "dk_a").then_some(&key),
                T0
            )
            .is_err());
        }
    }

    // No CVC on the card.
    let no_cvc = card("4242424242424242", None);
    assert!(tokenize_cvc(&no_cvc, &t.token, &BINDING, &key, rng.nonce(), T0, HOUR).is_err());
}

/// A fake Workers KV: values with an optional deletion time (expiration_ttl).
#[derive(Default)]
struct FakeKv {
    records: HashMap<String, (String, i64)>,
}

impl FakeKv {
    fn put(&mut self, key: &str, value: String, ttl_secs: u64, now: i64) {
        assert!(ttl_secs >= KV_MIN_TTL_SECS, "KV refuses ttl {ttl_secs}");
        self.records
            .insert(key.to_owned(), (value, now + ttl_secs as i64 * 1000));
    }
    fn get(&self, key: &str, now: i64) -> Option<&str> {
        self.records
            .get(key)
            .filter(|(_, gone)| now < *gone)
            .map(|(v, _)| v.as_str())
    }
    fn record(&self, kid: &str, now: i64) -> Option<KeyRecord> {
        self.get(&kv_key_record(kid), now)
            .map(|json| serde_json::from_str(json).unwrap())
    }
}

/// What the shell does to get a key for tokenizing (see the module docs).
fn current_key(
    kv: &mut FakeKv,
    cache: &mut KeyCache,
    rng: &mut FakeRng,
    colo: &str,
    now: i64,
) -> DataKey {
    if let Some(key) = cache.current(now) {
        return key.clone();
    }
    let record = kv
        .get(&kv_key_current(colo), now)
        .map(str::to_owned)
        .and_then(|kid| kv.record(&kid, now));
    let key = if needs_rotation(record.as_ref(), now) {
        let kid = format!("dk_{colo}_{}", hex::encode(&rng.bytes32()[..8]));
        let (record, key) = new_key_record(
            &kid,
            rng.bytes32(),
            rng.nonce(),
            &keks(),
            now,
            &KeyPolicy::default(),
        )
        .unwrap();
        let ttl = record.kv_expiration_ttl_secs(now);
        kv.put(
            &kv_key_record(&kid),
            serde_json::to_string(&record).unwrap(),
            ttl,
            now,
        );
        kv.put(&kv_key_current(colo), kid, ttl, now);
        key
    } else {
        unwrap_key(&record.unwrap(), &keks()).unwrap()
    };
    cache.insert(key.clone(), now);
    cache.set_current(&key.kid);
    key
}

/// Tokenize every minute and detokenize every live token every minute for 6 hours with
/// keys rotating every 15 minutes: nothing fails while a token is inside its ttl (= the
/// grace period), everything fails with `token_expired` after it.
#[test]
fn rotation_under_load_with_fake_clock() {
    let mut rng = FakeRng(9);
    let mut kv = FakeKv::default();
    let mut cache = KeyCache::new(MIN, 16);
    let c = card("4242424242424242", None);
    let ttl = KeyPolicy::default().grace_ms;
    let mut tokens: Vec<Token> = Vec::new();
    let mut kids = std::collections::BTreeSet::new();
    let mut opened = 0usize;
    let mut expired_seen = 0usize;
    let mut now = T0;
    while now < T0 + 6 * HOUR {
        let key = current_key(&mut kv, &mut cache, &mut rng, "ams", now);
        kids.insert(key.kid.clone());
        let t = tokenize(&c, &BINDING, &key, rng.nonce(), now, ttl).unwrap();
        assert_eq!(t.expires_at_ms, now + ttl, "full ttl at {now}");
        tokens.push(t);

        // A cold read from KV per kid (what an isolate without the key in cache does).
        let mut cold_reads: HashMap<String, Option<DataKey>> = HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            let kid = token_kid(&t.token).unwrap();
            let cold = cold_reads
                .entry(kid.clone())
                .or_insert_with(|| {
                    kv.record(&kid, now)
                        .map(|r| unwrap_key(&r, &keks()).unwrap())
                })
                .clone();
            // Alternate between the isolate's cache and the cold read.
            let result = if (i + now as usize / MIN as usize).is_multiple_of(2) {
                if cache.get(&kid, now).is_none() {
                    if let Some(k) = cold.clone() {
                        cache.insert(k, now);
                    }
                }
                detokenize(&t.token, &BINDING, |k| cache.get(k, now), now)
            } else {
                detokenize(&t.token, &BINDING, |_| cold.as_ref(), now)
            };
            if now <= t.expires_at_ms {
                let back = result.unwrap_or_else(|e| panic!("token {i} at +{}: {e:?}", now - T0));
                assert_eq!(back.number().expose(), "4242424242424242");
                opened += 1;
            } else {
                assert_eq!(result.unwrap_err(), VaultError::TokenExpired);
                expired_seen += 1;
            }
        }
        now += MIN;
    }
    // 6 h / 15 min = 24 keys, each rotation seen.
    assert_eq!(kids.len(), 24);
    assert!(
        opened > 10_000 && expired_seen > 10_000,
        "{opened} {expired_seen}"
    );
    // KV has deleted old records by now (crypto-shredding).
    assert!(kv.record(kids.iter().next().unwrap(), now).is_none());
}

/// Master-key rotation: records are rewrapped under the new KEK, the old KEK is retired,
/// and tokens sealed before keep working.
#[test]
fn kek_rotation_via_rewrap_keeps_live_tokens() {
    let mut rng = FakeRng(10);
    let old = KekSet::new(Kek::from_bytes([0xA1; 32]), vec![]);
    let (record, key) = new_key_record(
        "dk_a",
        rng.bytes32(),
        rng.nonce(),
        &old,
        T0,
        &KeyPolicy::default(),
    )
    .unwrap();
    let c = card("6011111111111117", None);
    let t = tokenize(&c, &BINDING, &key, rng.nonce(), T0, HOUR).unwrap();

    // Step 1: deploy VAULT_KEK=new, VAULT_KEK_PREVIOUS=old.
    let old_b64 = URL_SAFE_NO_PAD.encode([0xA1u8; 32]);
    let new_b64 = URL_SAFE_NO_PAD.encode([0xB2u8; 32]);
    let both = KekSet::parse(&new_b64, Some(&old_b64)).unwrap();
    assert!(needs_rewrap(&record, &both));
    // Still readable before rewrap.
    let k = unwrap_key(&record, &both).unwrap();
    assert!(detokenize(&t.token, &BINDING, |_| Some(&k), T0 + MIN).is_ok());
    // Step 2: rewrap and put back.
    let moved = rewrap(&record, &both, rng.nonce()).unwrap();
    assert_ne!(moved.wrapped_b64, record.wrapped_b64);
    // Step 3: retire the old KEK.
    let new_only = KekSet::parse(&new_b64, None).unwrap();
    let k = unwrap_key(&moved, &new_only).unwrap();
    let back = detokenize(&t.token, &BINDING, |_| Some(&k), T0 + 2 * MIN).unwrap();
    assert_eq!(back.number().expose(), "6011111111111117");
    // An old record that was missed can no longer be opened.
    assert!(matches!(
        unwrap_key(&record, &new_only),
        Err(VaultError::KekUnknown { .. })
    ));
}

#[test]
fn debug_output_never_shows_card_or_key_material() {
    let mut rng = FakeRng(11);
    let key_bytes = [0x5A; 32];
    let (record, key) = new_key_record(
        "dk_a",
        key_bytes,
        rng.nonce(),
        &keks(),
        T0,
        &KeyPolicy::default(),
    )
    .unwrap();
    let c = card("4242424242424242", Some("987"));
    let t = tokenize(&c, &BINDING, &key, rng.nonce(), T0, HOUR).unwrap();
    let v = tokenize_cvc(&c, &t.token, &BINDING, &key, rng.nonce(), T0, HOUR).unwrap();
    let back = detokenize(&t.token, &BINDING, |_| Some(&key), T0).unwrap();
    let mut cache = KeyCache::new(MIN, 4);
    cache.insert(key.clone(), T0);
    let text = format!(
        "{c:?} {c:#?} {back:?} {key:?} {key:#?} {record:?} {t:?} {v:?} {cache:?} {:?}",
        keks()
    );
    for needle in [
        "4242424242424242",
        "424242",
        "987",
        "90, 90",
        "5a5a",
        "17, 17",
        "1111",
    ] {
        assert!(!text.to_lowercase().contains(needle), "{needle} in {text}");
    }
    assert!(text.contains("Secret(***)"));
    assert!(
        text.contains("4242") && text.contains("last4"),
        "last4 may show"
    );
}

#[test]
fn errors_map_to_stable_codes() {
    let cases = [
        (VaultError::InvalidToken, 400, "invalid_token"),
        (VaultError::TokenExpired, 410, "token_expired"),
        (VaultError::KeyRevoked, 410, "key_revoked"),
        (VaultError::CvcAlreadyUsed, 409, "cvc_already_used"),
        (
            VaultError::Card(crate::card::CardError::Expired),
            422,
            "card_expired",
        ),
        (
            VaultError::KekUnknown {
                kek_id: "kek_x".into(),
            },
            500,
            "vault_unavailable",
        ),
    ];
    for (err, status, code) in cases {
        let api = err.to_api();
        assert_eq!((api.status, api.code.as_ref()), (status, code), "{err:?}");
        assert_eq!(err.code(), code);
        assert!(!api.message.is_empty());
    }
    let api = VaultError::KekUnknown {
        kek_id: "kek_secretish".into(),
    }
    .to_api();
    assert!(!api.message.contains("kek_secretish"));
}
