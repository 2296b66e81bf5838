//! Tests of the policy core: files, validation, canonical bytes, signatures, activation,
//! rollback and the cache. Also test helpers shared with the quote tests.

use super::*;
use std::collections::HashMap;

pub(crate) const KID_A: &str = "policy-team-1";
pub(crate) const KID_B: &str = "policy-team-2";

pub(crate) fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Trusts KID_A (seed 1) and KID_B (seed 2); KID_B retired when asked.
pub(crate) fn trusted(b_retired: bool) -> TrustedKeys {
    let json = serde_json::json!({
        KID_A: encode_public_key(&signing_key(1).verifying_key()),
        KID_B: {"public_key": encode_public_key(&signing_key(2).verifying_key()), "retired": b_retired},
    });
    TrustedKeys::from_json(&json.to_string()).unwrap()
}

pub(crate) fn policy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

pub(crate) fn file_value(jur: &str) -> Value {
    let text = std::fs::read_to_string(policy_dir().join(format!("{jur}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A bundle file as JSON with its revision and author key id set.
pub(crate) fn bundle_value(jur: &str, revision: u64, kid: &str) -> Value {
    let mut v = file_value(jur);
    v["manifest"]["revision"] = revision.into();
    v["manifest"]["author_kid"] = kid.into();
    v
}

pub(crate) fn signed(v: &Value, kid: &str, seed: u8) -> String {
    serde_json::to_string(&sign_bundle(v, kid, &signing_key(seed))).unwrap()
}

/// The verified, loaded form of a policy file (revision 1, signed by KID_A).
pub(crate) fn loaded(jur: &str) -> LoadedBundle {
    let json = signed(&bundle_value(jur, 1, KID_A), KID_A, 1);
    verify_envelope(&json, &trusted(false)).unwrap().loaded
}

/// A stand-in for the edge shell over a KV map, doing exactly the steps the module docs ask.
#[derive(Default)]
pub(crate) struct MemEdge {
    pub kv: HashMap<String, String>,
}

impl MemEdge {
    pub fn active(&self, jur: &str) -> Option<ActivePointer> {
        self.kv
            .get(&active_key(jur))
            .map(|s| serde_json::from_str(s).unwrap())
    }

    pub fn history(&self, jur: &str) -> History {
        self.kv
            .get(&history_key(jur))
            .map(|s| serde_json::from_str(s).unwrap())
            .unwrap_or_default()
    }

    fn apply(&mut self, act: &Activation) {
        if act.unchanged {
            return;
        }
        if let Some((k, v)) = &act.store_revision {
            self.kv.insert(k.clone(), v.clone());
        }
        let mut h = self.history(&act.jurisdiction);
        h.record(act.history_entry.clone());
        self.kv.insert(
            history_key(&act.jurisdiction),
            serde_json::to_string(&h).unwrap(),
        );
        self.kv.insert(
            active_key(&act.jurisdiction),
            serde_json::to_string(&act.pointer).unwrap(),
        );
    }

    pub fn push(
        &mut self,
        json: &str,
        keys: &TrustedKeys,
        now: i64,
    ) -> Result<Activation, PolicyError> {
        let v = verify_envelope(json, keys)?;
        let act = decide_push(&v, self.active(&v.loaded.bundle.jurisdiction).as_ref(), now)?;
        self.apply(&act);
        Ok(act)
    }

    pub fn rollback(
        &mut self,
        json: &str,
        keys: &TrustedKeys,
        now: i64,
    ) -> Result<Activation, PolicyError> {
        let rb = verify_rollback(json, keys)?;
        let jur = rb.rollback.jurisdiction.clone();
        let target = self
            .kv
            .get(&revision_key(&jur, rb.rollback.to_revision))
            .cloned();
        let act = decide_rollback(
            &rb,
            self.active(&jur).as_ref(),
            target.as_deref(),
            keys,
            now,
        )?;
        self.apply(&act);
        Ok(act)
    }

    /// What a PoP would enforce for `jur`, pinned or active.
    pub fn load(&self, jur: &str, pin: Option<u64>, keys: &TrustedKeys) -> LoadedBundle {
        let rev = resolve_revision(pin, self.active(jur).as_ref()).unwrap();
        let env = &self.kv[&revision_key(jur, rev)];
        verify_envelope(env, keys).unwrap().loaded
    }
}

fn rollback_json(jur: &str, from: u64, to: u64, kid: &str, seed: u8) -> String {
    let st = RollbackStatement {
        jurisdiction: jur.into(),
        from_revision: from,
        to_revision: to,
        created_ms: 1_800_000_000_000,
    };
    serde_json::to_string(&sign_rollback(&st, kid, &signing_key(seed))).unwrap()
}

const REQUIRED: &[&str] = &[
    "DE", "FR", "GB", "NL", "ES", "IE", "US-CA", "US-NY", "US-TX", "JP", "AU", "CA-ON", "default",
];

#[test]
fn every_policy_file_validates_and_names_its_jurisdiction() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(policy_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.ends_with(".json") || name == "schema.json" {
            continue;
        }
        let stem = name.trim_end_matches(".json").to_string();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let b = match validate_value(&v) {
            Ok(b) => b,
            Err(p) => panic!("{name}: {p:?}"),
        };
        assert_eq!(b.jurisdiction, stem, "{name}");
        if stem != DEFAULT_JURISDICTION {
            assert!(!b.metadata.sources.is_empty(), "{name} names no source");
            assert!(b.currency.is_some(), "{name}");
            assert!(b.tax.standard_rate_ppm > 0, "{name}");
        }
        seen.push(stem);
    }
    for j in REQUIRED {
        assert!(seen.iter().any(|s| s == j), "policies/{j}.json is missing");
    }
}

#[test]
fn published_rates_are_the_ones_in_the_files() {
    let rate = |j: &str| validate_value(&file_value(j)).unwrap().tax;
    assert_eq!(rate("DE").standard_rate_ppm, 190_000);
    assert_eq!(rate("DE").reduced_rates_ppm, vec![70_000]);
    assert_eq!(rate("FR").rates_ppm.admission, 55_000);
    assert_eq!(rate("GB").standard_rate_ppm, 200_000);
    assert_eq!(rate("IE").standard_rate_ppm, 230_000);
    assert_eq!(rate("JP").rates_ppm.food_and_drink, 80_000);
    assert_eq!(rate("JP").prices, PriceMode::Inclusive);
    assert_eq!(rate("US-NY").rates_ppm.merchandise, 88_750);
    assert_eq!(rate("US-CA").prices, PriceMode::Exclusive);
    assert_eq!(rate("CA-ON").standard_rate_ppm, 130_000);
    assert_eq!(rate("AU").standard_rate_ppm, 100_000);
}

#[test]
fn compiled_in_default_parses_from_the_file() {
    let d = default_bundle();
    // The hard-coded fallback has revision 0 and no sources; the file has revision >= 1.
    assert!(d.revision >= 1);
    assert_eq!(d.bundle.jurisdiction, DEFAULT_JURISDICTION);
    assert_eq!(
        d.hash,
        bundle_hash(&serde_json::from_str(DEFAULT_BUNDLE_JSON).unwrap())
    );
    assert_eq!(d.bundle.offline.per_event_cap, MinorUnits(0));
    let hard = hard_coded_default();
    // Valid except for its revision 0, which marks it as the last resort.
    let paths: Vec<String> = validate(&hard.bundle).into_iter().map(|p| p.path).collect();
    assert_eq!(paths, vec!["manifest.revision"]);
    assert_eq!(hard.revision, 0);
    assert_eq!(hard.bundle.offline.per_transaction_cap, MinorUnits(0));
}

#[test]
fn validation_reports_every_problem_with_its_path() {
    let mut v = file_value("DE");
    v["tax"]["rates_ppm"]["admission"] = 123.into();
    v["offline"]["per_transaction_cap"] = 999_999.into();
    v["languages"][0] = "DEU".into();
    v["compliance"]["consent"]["fr"] = "Texte".into();
    v["refunds"]["merchandise"]["dated_leisure_exempt"] = true.into();
    v["manifest"]["jurisdictions"] = serde_json::json!(["FR"]);
    v["extra"] = 1.into();
    let problems = validate_value(&v).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "tax.rates_ppm.admission",
        "offline.per_transaction_cap",
        "languages[0]",
        "compliance.consent.fr",
        "refunds.merchandise.dated_leisure_exempt",
        "manifest.jurisdictions[0]",
        "manifest.jurisdictions",
        "extra",
    ] {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
    }
}

#[test]
fn type_errors_in_several_sections_are_reported_together() {
    let mut v = file_value("FR");
    v["receipt"]["tax_breakdown"] = "yes".into();
    v["tax"]["rounding"] = "nearest".into();
    v["offline"]["max_queue_age_secs"] = 999_999_999.into(); // parses; rule problem
    v.as_object_mut().unwrap().remove("retention_days");
    let problems = validate_value(&v).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"receipt.tax_breakdown"), "{paths:?}");
    assert!(paths.contains(&"tax.rounding"), "{paths:?}");
    assert!(paths.contains(&"retention_days"), "{paths:?}");
    assert!(paths.contains(&"offline.max_queue_age_secs"), "{paths:?}");
    assert_eq!(validate_value(&Value::Null).unwrap_err().len(), 1);
}

#[test]
fn only_default_may_leave_out_currency_and_sources() {
    let mut v = file_value("GB");
    v.as_object_mut().unwrap().remove("currency");
    v["metadata"]["sources"] = serde_json::json!([]);
    let paths: Vec<String> = validate_value(&v)
        .unwrap_err()
        .into_iter()
        .map(|p| p.path)
        .collect();
    assert_eq!(paths, vec!["currency", "metadata.sources"]);
}

#[test]
fn jurisdiction_codes_and_lookup_chain() {
    for ok in ["DE", "US-CA", "CA-ON", "GB-ENG", "FR-75"] {
        assert!(is_jurisdiction_code(ok), "{ok}");
    }
    for bad in ["de", "DEU", "US-", "US-CALI", "U1", ""] {
        assert!(!is_jurisdiction_code(bad), "{bad}");
    }
    assert_eq!(lookup_chain("US-CA"), vec!["US-CA", "US", "default"]);
    assert_eq!(lookup_chain("DE"), vec!["DE", "default"]);
    assert_eq!(lookup_chain("nonsense"), vec!["default"]);
}

#[test]
fn canonical_bytes_sort_keys_and_drop_whitespace() {
    let a: Value =
        serde_json::from_str(r#"{ "b": 1, "a": [ {"d": 2, "c": "x\"y"} ], "é": null }"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"é":null,"a":[{"c":"x\"y","d":2}],"b":1}"#).unwrap();
    let want = r#"{"a":[{"c":"x\"y","d":2}],"b":1,"é":null}"#;
    assert_eq!(String::from_utf8(canonical_bytes(&a)).unwrap(), want);
    assert_eq!(canonical_bytes(&a), canonical_bytes(&b));
    assert_eq!(
        bundle_hash(&a),
        hex::encode(Sha256::digest(want.as_bytes()))
    );
    assert_eq!(bundle_hash(&a).len(), 64);
}

#[test]
fn trusted_keys_parse_both_forms_and_refuse_bad_ones() {
    let k = trusted(true);
    assert!(!k.get(KID_A).unwrap().retired);
    assert!(k.get(KID_B).unwrap().retired);
    for bad in [
        r#"[]"#,
        r#"{"a": "not base64!"}"#,
        r#"{"a": "AAAA"}"#,
        r#"{"bad kid": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#,
    ] {
        let e = TrustedKeys::from_json(bad).unwrap_err();
        assert_eq!(e.code(), "policy_keys_config", "{bad}");
    }
    assert_eq!(
        derive_kid(&signing_key(1).verifying_key()),
        derive_kid(&signing_key(1).verifying_key())
    );
    assert_ne!(
        derive_kid(&signing_key(1).verifying_key()),
        derive_kid(&signing_key(2).verifying_key())
    );
}

#[test]
fn signed_bundle_verifies_and_reports_its_hash() {
    let v = bundle_value("NL", 4, KID_A);
    let vb = verify_envelope(&signed(&v, KID_A, 1), &trusted(false)).unwrap();
    assert_eq!(vb.loaded.revision, 4);
    assert_eq!(vb.loaded.hash, bundle_hash(&v));
    assert_eq!(vb.loaded.kid.as_deref(), Some(KID_A));
    // The stored envelope verifies again.
    assert!(verify_envelope(&vb.envelope_json, &trusted(false)).is_ok());
}

#[test]
fn tampered_unknown_retired_and_mislabelled_are_refused_each_with_its_code() {
    let keys = trusted(true);
    let v = bundle_value("DE", 2, KID_A);
    let mut env = sign_bundle(&v, KID_A, &signing_key(1));
    env.bundle["tax"]["rates_ppm"]["merchandise"] = 70_000.into();
    let tampered = serde_json::to_string(&env).unwrap();
    let code = |j: &str| verify_envelope(j, &keys).unwrap_err().code();
    assert_eq!(code(&tampered), "policy_bad_signature");
    assert_eq!(
        code(&signed(&bundle_value("DE", 2, "stranger"), "stranger", 9)),
        "policy_unknown_key"
    );
    assert_eq!(
        code(&signed(&bundle_value("DE", 2, KID_B), KID_B, 2)),
        "policy_key_retired"
    );
    // Signed by A's kid with B's private key.
    assert_eq!(code(&signed(&v, KID_A, 2)), "policy_bad_signature");
    // Correct signature, but the manifest names another author.
    assert_eq!(
        code(&signed(&bundle_value("DE", 2, KID_B), KID_A, 1)),
        "policy_invalid"
    );
    let mut env = sign_bundle(&v, KID_A, &signing_key(1));
    env.signature.alg = "HS256".into();
    assert_eq!(
        code(&serde_json::to_string(&env).unwrap()),
        "policy_bad_signature"
    );
    env.signature.alg = SIGNATURE_ALG.into();
    env.signature.sig = "!!".into();
    assert_eq!(
        code(&serde_json::to_string(&env).unwrap()),
        "policy_bad_signature"
    );
    assert_eq!(code("{\"bundle\": 1}"), "policy_malformed");
    assert_eq!(code("not json"), "policy_malformed");
}

#[test]
fn refused_pushes_leave_the_active_bundle_in_place() {
    let keys = trusted(true);
    let mut edge = MemEdge::default();
    edge.push(
        &signed(&bundle_value("DE", 3, KID_A), KID_A, 1),
        &keys,
        1_000,
    )
    .unwrap();
    let before = edge.active("DE").unwrap();
    assert_eq!(before.revision, 3);

    let mut env = sign_bundle(&bundle_value("DE", 4, KID_A), KID_A, &signing_key(1));
    env.bundle["retention_days"] = 1.into();
    let tampered = serde_json::to_string(&env).unwrap();
    let mut bad_schema = bundle_value("DE", 5, KID_A);
    bad_schema["tax"]["rates_ppm"]["admission"] = 1.into();
    let cases = [
        (tampered, "policy_bad_signature"),
        (
            signed(&bundle_value("DE", 4, "x"), "x", 7),
            "policy_unknown_key",
        ),
        (
            signed(&bundle_value("DE", 4, KID_B), KID_B, 2),
            "policy_key_retired",
        ),
        (
            signed(&bundle_value("DE", 2, KID_A), KID_A, 1),
            "policy_stale_revision",
        ),
        (signed(&bad_schema, KID_A, 1), "policy_invalid"),
    ];
    for (json, want) in cases {
        let e = edge.push(&json, &keys, 2_000).unwrap_err();
        assert_eq!(e.code(), want);
        assert_eq!(
            edge.active("DE").unwrap(),
            before,
            "{want} moved the pointer"
        );
        assert_eq!(edge.load("DE", None, &keys).revision, 3);
    }
    let invalid = edge
        .push(&signed(&bad_schema, KID_A, 1), &keys, 2_000)
        .unwrap_err();
    assert_eq!(invalid.to_api().status, 422);
    assert_eq!(
        invalid.body()["error"]["problems"][0]["path"],
        "tax.rates_ppm.admission"
    );
    assert_eq!(edge.history("DE").0.len(), 1);
}

#[test]
fn push_moves_pointer_and_repeating_it_is_idempotent() {
    let keys = trusted(false);
    let mut edge = MemEdge::default();
    let one = signed(&bundle_value("JP", 1, KID_A), KID_A, 1);
    let a = edge.push(&one, &keys, 10).unwrap();
    assert!(!a.unchanged);
    assert_eq!(a.store_revision.as_ref().unwrap().0, "policy:rev:JP:1");
    let again = edge.push(&one, &keys, 20).unwrap();
    assert!(again.unchanged);
    assert_eq!(edge.active("JP").unwrap().activated_ms, 10);
    edge.push(&signed(&bundle_value("JP", 2, KID_B), KID_B, 2), &keys, 30)
        .unwrap();
    let p = edge.active("JP").unwrap();
    assert_eq!((p.revision, p.highest_revision, p.via), (2, 2, Via::Push));
    // A different bundle under an already used revision number is stale.
    let mut other = bundle_value("JP", 2, KID_A);
    other["retention_days"] = 3000.into();
    assert_eq!(
        edge.push(&signed(&other, KID_A, 1), &keys, 40)
            .unwrap_err()
            .code(),
        "policy_stale_revision"
    );
    assert_eq!(
        edge.history("JP")
            .0
            .iter()
            .map(|h| h.revision)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn signed_rollback_moves_the_pointer_back_and_cannot_be_replayed() {
    let keys = trusted(false);
    let mut edge = MemEdge::default();
    for rev in 1..=3 {
        edge.push(
            &signed(&bundle_value("FR", rev, KID_A), KID_A, 1),
            &keys,
            rev as i64,
        )
        .unwrap();
    }
    let rb = rollback_json("FR", 3, 1, KID_B, 2);
    let act = edge.rollback(&rb, &keys, 100).unwrap();
    assert_eq!(act.loaded.revision, 1);
    let p = edge.active("FR").unwrap();
    assert_eq!(
        (p.revision, p.highest_revision, p.via),
        (1, 3, Via::Rollback)
    );
    assert_eq!(p.hash, bundle_hash(&bundle_value("FR", 1, KID_A)));
    assert_eq!(edge.load("FR", None, &keys).revision, 1);
    let last = edge.history("FR").0.last().cloned().unwrap();
    assert_eq!(
        (last.revision, last.from_revision, last.via),
        (1, Some(3), Via::Rollback)
    );

    // Replaying the same rollback, or an old push, is refused.
    assert_eq!(
        edge.rollback(&rb, &keys, 101).unwrap_err().code(),
        "policy_rollback_conflict"
    );
    let replay = signed(&bundle_value("FR", 2, KID_A), KID_A, 1);
    assert_eq!(
        edge.push(&replay, &keys, 102).unwrap_err().code(),
        "policy_stale_revision"
    );
    // Rolling "back" upwards, to a missing revision, or with an untrusted key is refused.
    assert_eq!(
        edge.rollback(&rollback_json("FR", 1, 3, KID_A, 1), &keys, 103)
            .unwrap_err()
            .code(),
        "policy_rollback_not_older"
    );
    assert_eq!(
        edge.rollback(&rollback_json("FR", 1, 0, KID_A, 1), &keys, 103)
            .unwrap_err()
            .code(),
        "policy_revision_not_found"
    );
    assert_eq!(
        edge.rollback(&rollback_json("FR", 1, 0, "x", 9), &keys, 103)
            .unwrap_err()
            .code(),
        "policy_unknown_key"
    );
    assert_eq!(
        edge.rollback(&rollback_json("GB", 1, 0, KID_A, 1), &keys, 103)
            .unwrap_err()
            .code(),
        "policy_revision_not_found"
    );
    // A tampered statement fails its signature.
    let mut env: SignedRollback =
        serde_json::from_str(&rollback_json("FR", 1, 0, KID_A, 1)).unwrap();
    env.rollback.to_revision = 2;
    assert_eq!(
        edge.rollback(&serde_json::to_string(&env).unwrap(), &keys, 103)
            .unwrap_err()
            .code(),
        "policy_bad_signature"
    );
    // A bundle signature cannot pass as a rollback signature (different context).
    let bundle_sig: SignedBundle =
        serde_json::from_str(&signed(&bundle_value("FR", 9, KID_A), KID_A, 1)).unwrap();
    env.signature = bundle_sig.signature;
    assert_eq!(
        edge.rollback(&serde_json::to_string(&env).unwrap(), &keys, 103)
            .unwrap_err()
            .code(),
        "policy_bad_signature"
    );
    // The next push must go above the highest revision ever active.
    edge.push(&signed(&bundle_value("FR", 4, KID_A), KID_A, 1), &keys, 104)
        .unwrap();
    assert_eq!(edge.active("FR").unwrap().revision, 4);
    assert_eq!(edge.active("FR").unwrap().highest_revision, 4);
}

#[test]
fn rollback_to_a_bundle_of_a_retired_key_is_refused() {
    let mut edge = MemEdge::default();
    let keys = trusted(false);
    edge.push(&signed(&bundle_value("ES", 1, KID_B), KID_B, 2), &keys, 1)
        .unwrap();
    edge.push(&signed(&bundle_value("ES", 2, KID_A), KID_A, 1), &keys, 2)
        .unwrap();
    let retired = trusted(true);
    let e = edge
        .rollback(&rollback_json("ES", 2, 1, KID_A, 1), &retired, 3)
        .unwrap_err();
    assert_eq!(e.code(), "policy_key_retired");
    assert_eq!(edge.active("ES").unwrap().revision, 2);
}

#[test]
fn pinned_events_keep_their_revision_while_others_follow_the_active_one() {
    let keys = trusted(false);
    let mut edge = MemEdge::default();
    edge.push(&signed(&bundle_value("IE", 1, KID_A), KID_A, 1), &keys, 1)
        .unwrap();
    let mut v2 = bundle_value("IE", 2, KID_A);
    v2["retention_days"] = 3000.into();
    edge.push(&signed(&v2, KID_A, 1), &keys, 2).unwrap();
    let pinned = edge.load("IE", Some(1), &keys);
    let follows = edge.load("IE", None, &keys);
    assert_eq!((pinned.revision, pinned.bundle.retention_days), (1, 2190));
    assert_eq!((follows.revision, follows.bundle.retention_days), (2, 3000));
    assert_ne!(pinned.hash, follows.hash);
    assert_eq!(resolve_revision(None, None), None);
}

#[test]
fn cache_serves_fresh_then_stale_and_keeps_the_last_good_bundle() {
    let mut cache = PolicyCache::new(30_000);
    assert_eq!(cache.lookup("DE", 0), CacheLookup::Missing);
    assert_eq!(cache.load_failed("DE", 0), None);
    let de = loaded("DE");
    cache.store("DE", de.clone(), 1_000);
    assert!(matches!(cache.lookup("DE", 30_999), CacheLookup::Fresh(ref b) if **b == de));
    assert!(matches!(cache.lookup("DE", 31_000), CacheLookup::Stale(ref b) if **b == de));
    // A failed reload keeps the old bundle and makes it fresh for another TTL.
    assert_eq!(cache.load_failed("DE", 31_000).as_deref(), Some(&de));
    assert!(matches!(cache.lookup("DE", 60_999), CacheLookup::Fresh(_)));
    assert!(matches!(cache.lookup("DE", 61_000), CacheLookup::Stale(_)));
    // Pinned revisions never go stale.
    cache.store(&cache_key("DE", Some(1)), de.clone(), 0);
    assert!(matches!(
        cache.lookup("DE@1", i64::MAX),
        CacheLookup::Fresh(_)
    ));
    cache.invalidate("DE");
    assert_eq!(cache.lookup("DE", 0), CacheLookup::Missing);
}

#[test]
fn errors_map_to_statuses_and_never_panic_on_garbage() {
    assert_eq!(
        PolicyError::StaleRevision {
            pushed: 1,
            highest: 2
        }
        .to_api()
        .status,
        409
    );
    assert_eq!(PolicyError::UnknownKey("k".into()).to_api().status, 403);
    assert_eq!(PolicyError::BadSignature("x".into()).to_api().status, 422);
    let keys = trusted(false);
    for junk in ["", "null", "[]", "{\"bundle\":{},\"signature\":{\"kid\":\"policy-team-1\",\"alg\":\"Ed25519\",\"sig\":\"\"}}"] {
        assert!(verify_envelope(junk, &keys).is_err());
        assert!(verify_rollback(junk, &keys).is_err());
    }
}

/// Follows `$ref: "#/$defs/x"` in the schema.
fn resolve<'a>(schema: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => &schema["$defs"][r.trim_start_matches("#/$defs/")],
        None => node,
    }
}

/// Checks that every object in `value` has exactly the fields the schema allows and at
/// least the ones it requires, recursively.
fn check_against_schema(schema: &Value, node: &Value, value: &Value, path: &str, seen: &mut usize) {
    let node = resolve(schema, node);
    match value {
        Value::Object(map) => {
            let props = node["properties"].as_object();
            if let Some(props) = props {
                *seen += 1;
                for (k, v) in map {
                    let sub = props
                        .get(k)
                        .unwrap_or_else(|| panic!("{path}.{k} is not in schema.json"));
                    check_against_schema(schema, sub, v, &format!("{path}.{k}"), seen);
                }
                for r in node["required"].as_array().unwrap() {
                    assert!(
                        map.contains_key(r.as_str().unwrap()),
                        "{path}: schema requires {r}"
                    );
                }
                assert_eq!(node["additionalProperties"], false, "{path}");
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_against_schema(schema, &node["items"], v, &format!("{path}[{i}]"), seen);
            }
        }
        _ => {}
    }
}

#[test]
fn schema_json_matches_the_bundle_types() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(policy_dir().join("schema.json")).unwrap())
            .unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let props: BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(props, TOP_LEVEL.iter().copied().collect::<BTreeSet<_>>());
    for jur in REQUIRED {
        // Typed and re-serialized: every field the Rust types write must be in the schema.
        let typed = serde_json::to_value(validate_value(&file_value(jur)).unwrap()).unwrap();
        let mut seen = 0;
        check_against_schema(&schema, &schema, &typed, jur, &mut seen);
        check_against_schema(&schema, &schema, &file_value(jur), jur, &mut seen);
        assert!(seen >= 20, "{jur}: only {seen} objects checked");
    }
    // A field the types do not know is caught by the check.
    let mut v = file_value("DE");
    v["tax"]["vat_id"] = 1.into();
    let r = std::panic::catch_unwind(|| check_against_schema(&schema, &schema, &v, "DE", &mut 0));
    assert!(r.is_err());
}

#[test]
fn max_queue_age_is_one_second_to_the_ledgers_longest_wait() {
    assert_eq!(
        MAX_QUEUE_AGE_SECS as i64 * 1000,
        crate::ledger::MAX_OFFLINE_WAIT_MS
    );
    let problems_at = |secs: u64| {
        let mut v = file_value("DE");
        v["offline"]["max_queue_age_secs"] = secs.into();
        match validate_value(&v) {
            Ok(_) => vec![],
            Err(problems) => problems.into_iter().map(|p| p.path).collect::<Vec<_>>(),
        }
    };
    for ok in [1, 86_400, 259_200] {
        assert!(problems_at(ok).is_empty(), "{ok}");
    }
    // 0 (no time at all) and anything the ledger would refuse to store (72 h + 1 s, 7 days).
    for bad in [0, 259_201, 604_800] {
        assert_eq!(
            problems_at(bad),
            vec!["offline.max_queue_age_secs"],
            "{bad}"
        );
    }
    // The schema says the same.
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(policy_dir().join("schema.json")).unwrap())
            .unwrap();
    let age = &schema["properties"]["offline"]["properties"]["max_queue_age_secs"];
    assert_eq!(age["minimum"], 1);
    assert_eq!(age["maximum"], MAX_QUEUE_AGE_SECS);
}

#[test]
fn an_events_offline_budget_takes_the_policys_unknown_outcome_bound_and_stays_under_it() {
    let eur = Currency::parse("EUR").unwrap();
    let mut limits = OfflineLimits {
        per_transaction_cap: MinorUnits(5_000),
        per_event_cap: MinorUnits(50_000),
        max_queue_age_secs: 3600,
        unknown_exposure_cap: None,
    };
    // Without a bound of its own the policy's per-event cap is the bound.
    let b = limits.event_budget(None, eur, "XX").unwrap();
    assert_eq!(b.unknown_max, Some(MinorUnits(50_000)));
    limits.unknown_exposure_cap = Some(MinorUnits(8_000));
    let b = limits.event_budget(None, eur, "XX").unwrap();
    assert_eq!(b.unknown_max, Some(MinorUnits(8_000)));
    assert_eq!(b.unknown_bound(), MinorUnits(8_000));
    // A merchant may ask for less, never for more.
    let mut asked = b.clone();
    asked.unknown_max = Some(MinorUnits(2_000));
    let b2 = limits.event_budget(Some(asked.clone()), eur, "XX").unwrap();
    assert_eq!(b2.unknown_max, Some(MinorUnits(2_000)));
    asked.unknown_max = Some(MinorUnits(8_001));
    let e = limits.event_budget(Some(asked), eur, "XX").unwrap_err();
    assert_eq!((e.status, &*e.code), (422, "offline_budget_over_policy"));
    assert!(e.message.contains("80.00"), "{}", e.message);
    // And a negative bound is a policy error.
    limits.unknown_exposure_cap = Some(MinorUnits(-1));
    let mut p = Vec::new();
    check_offline(&limits, &mut p);
    assert!(p.iter().any(|x| x.path == "offline.unknown_exposure_cap"));
}

#[test]
fn purchase_limits_default_to_ten_per_item_and_bound_the_merchants_own() {
    // Absent from a bundle: 10 per item per order.
    let b = validate_value(&file_value("DE")).unwrap();
    assert_eq!(b.purchase.max_per_sku_per_order, 10);
    let mut v = file_value("DE");
    v["purchase"] = serde_json::json!({"max_per_sku_per_order": 4});
    assert_eq!(
        validate_value(&v).unwrap().purchase.max_per_sku_per_order,
        4
    );
    for bad in [0, 1001] {
        v["purchase"] = serde_json::json!({ "max_per_sku_per_order": bad });
        let problems = validate_value(&v).unwrap_err();
        assert_eq!(problems[0].path, "purchase.max_per_sku_per_order", "{bad}");
    }
    let sku = |max: Option<u32>| crate::ledger::Sku {
        id: "ticket".into(),
        name: "Entry".into(),
        category: crate::ledger::Category::Ticket,
        price: MinorUnits(1500),
        stock: 100,
        max_per_order: max,
    };
    let limits = PurchaseLimits {
        max_per_sku_per_order: 4,
    };
    let mut skus = vec![sku(None), sku(Some(2))];
    limits.apply(&mut skus, "DE").unwrap();
    assert_eq!(skus[0].max_per_order, Some(4));
    assert_eq!(skus[1].max_per_order, Some(2));
    for over in [5, 0] {
        let e = limits.apply(&mut [sku(Some(over))], "DE").unwrap_err();
        assert_eq!(e.status, 422);
        assert_eq!(e.code, "purchase_limit_over_policy");
    }
}
