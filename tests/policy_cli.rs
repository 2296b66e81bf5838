//! Runs the `poptill-policy` binary: keygen, validate, sign, and push / status / diff /
//! rollback against a small loopback edge built on the policy core's public API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use poptill::policy::{
    active_key, decide_push, decide_rollback, history_key, revision_key, verify_envelope,
    verify_rollback, Activation, ActivePointer, History, PolicyStatus, TrustedKeys,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const ADMIN: &str = "test-admin-key";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_poptill-policy"));
    c.env_remove("POPTILL_ADMIN_KEY");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("poptill-policy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs keygen; returns (key file, kid, public key).
fn keygen(dir: &Path, kid: &str) -> (String, String, String) {
    let path = dir.join(format!("{kid}.key.json"));
    let o = run(&["keygen", "--out", path.to_str().unwrap(), "--kid", kid]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    (
        path.to_str().unwrap().to_string(),
        field("kid:"),
        field("public_key:"),
    )
}

fn sign(key: &str, out: &Path, extra: &[&str], files: &[&str]) -> Output {
    let mut args = vec!["sign", "--key", key, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(files);
    run(&args)
}

#[test]
fn keygen_writes_a_private_key_file_once() {
    let dir = tmp("keygen");
    let (path, kid, public) = keygen(&dir, "author-1");
    assert_eq!(kid, "author-1");
    let keys = TrustedKeys::from_json(&json!({ kid.clone(): public }).to_string()).unwrap();
    assert!(keys.get(&kid).is_some());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never overwrites a key.
    let again = run(&["keygen", "--out", &path]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    // Without --kid, the kid is derived from the public key.
    let derived = run(&["keygen", "--out", dir.join("d.json").to_str().unwrap()]);
    assert!(
        text(&derived).contains("kid: ed25519-"),
        "{}",
        text(&derived)
    );
}

#[test]
fn validate_accepts_the_shipped_bundles_and_lists_every_problem() {
    let mut args = vec!["validate".to_string()];
    for e in std::fs::read_dir(policies()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            args.push(p.to_str().unwrap().to_string());
        }
    }
    assert!(args.len() >= 14);
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("schema.json: skipped"), "{}", text(&o));

    let dir = tmp("validate");
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(policies().join("DE.json")).unwrap())
            .unwrap();
    v["tax"]["rates_ppm"]["merchandise"] = 123.into();
    v["retention_days"] = 0.into();
    v["receipt"]["seller_tax_id"] = "yes".into();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, v.to_string()).unwrap();
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{ not json").unwrap();
    let o = run(&["validate", bad.to_str().unwrap(), garbage.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o);
    for want in [
        "bad.json: tax.rates_ppm.merchandise:",
        "bad.json: retention_days:",
        "bad.json: receipt.seller_tax_id:",
        "garbage.json: not JSON",
        "4 problem(s) in 2 file(s)",
    ] {
        assert!(out.contains(want), "{want:?} not in {out}");
    }
}

#[test]
fn sign_produces_envelopes_the_edge_verifies() {
    let dir = tmp("sign");
    let (key, kid, public) = keygen(&dir, "author-1");
    let out = dir.join("signed");
    let de = policies().join("DE.json");
    let jp = policies().join("JP.json");
    let o = sign(
        &key,
        &out,
        &["--revision", "7"],
        &[de.to_str().unwrap(), jp.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let keys = TrustedKeys::from_json(&json!({ kid.clone(): public }).to_string()).unwrap();
    for (file, jur) in [("DE.signed.json", "DE"), ("JP.signed.json", "JP")] {
        let env = std::fs::read_to_string(out.join(file)).unwrap();
        let v = verify_envelope(&env, &keys).unwrap();
        assert_eq!(v.loaded.bundle.jurisdiction, jur);
        assert_eq!(v.loaded.revision, 7);
        assert_eq!(v.loaded.bundle.manifest.author_kid, kid);
        assert!(text(&o).contains(&v.loaded.hash));
    }
    // Another key's trust set refuses them.
    let (_, other_kid, other_pub) = keygen(&dir, "author-2");
    let others = TrustedKeys::from_json(&json!({ other_kid: other_pub }).to_string()).unwrap();
    let env = std::fs::read_to_string(out.join("DE.signed.json")).unwrap();
    assert_eq!(
        verify_envelope(&env, &others).unwrap_err().code(),
        "policy_unknown_key"
    );

    // An invalid file stops the whole batch.
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&de).unwrap()).unwrap();
    v["offline"]["max_queue_age_secs"] = 99_999_999.into();
    let bad = dir.join("FR.json");
    std::fs::write(&bad, v.to_string()).unwrap();
    let out2 = dir.join("signed2");
    let o = sign(
        &key,
        &out2,
        &[],
        &[jp.to_str().unwrap(), bad.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("offline.max_queue_age_secs"));
    assert!(!out2.join("JP.signed.json").exists());
}

#[test]
fn usage_errors_exit_2_and_network_errors_exit_3() {
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&["validate"]).status.code(), Some(2));
    assert_eq!(run(&["sign", "--bogus", "x"]).status.code(), Some(2));
    assert_eq!(
        run(&["status", "--url", "http://127.0.0.1:1", "DE"])
            .status
            .code(),
        Some(2),
        "no admin key"
    );
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let o = run(&["status", "--url", &url, "--admin-key", ADMIN, "DE"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

// ----- a loopback edge on the core API ---------------------------------------------------

#[derive(Default)]
struct Kv(HashMap<String, String>);

impl Kv {
    fn active(&self, jur: &str) -> Option<ActivePointer> {
        self.0
            .get(&active_key(jur))
            .map(|s| serde_json::from_str(s).unwrap())
    }
    fn history(&self, jur: &str) -> History {
        self.0
            .get(&history_key(jur))
            .map(|s| serde_json::from_str(s).unwrap())
            .unwrap_or_default()
    }
    fn apply(&mut self, act: &Activation) {
        if act.unchanged {
            return;
        }
        if let Some((k, v)) = &act.store_revision {
            self.0.insert(k.clone(), v.clone());
        }
        let mut h = self.history(&act.jurisdiction);
        h.record(act.history_entry.clone());
        self.0.insert(
            history_key(&act.jurisdiction),
            serde_json::to_string(&h).unwrap(),
        );
        self.0.insert(
            active_key(&act.jurisdiction),
            serde_json::to_string(&act.pointer).unwrap(),
        );
    }
}

fn handle(
    kv: &mut Kv,
    keys: &TrustedKeys,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> (u16, Value) {
    if auth != format!("Bearer {ADMIN}") {
        return (401, poptill::error::ApiError::unauthorized().body());
    }
    let now = 1_800_000_000_000;
    let accepted = |act: &Activation| json!({"jurisdiction": act.jurisdiction, "active": act.pointer, "unchanged": act.unchanged});
    let parts: Vec<&str> = path
        .trim_start_matches("/v1/admin/policies")
        .split('/')
        .collect();
    match (method, parts.as_slice()) {
        ("PUT", [""]) => {
            let r = verify_envelope(body, keys).and_then(|v| {
                let active = kv.active(&v.loaded.bundle.jurisdiction);
                decide_push(&v, active.as_ref(), now)
            });
            match r {
                Ok(act) => {
                    kv.apply(&act);
                    (200, accepted(&act))
                }
                Err(e) => (e.to_api().status, e.body()),
            }
        }
        ("GET", ["", jur]) => match kv.active(jur) {
            None => (404, poptill::error::ApiError::not_found("policy").body()),
            Some(a) => {
                let s = PolicyStatus {
                    jurisdiction: jur.to_string(),
                    active: Some(a),
                    history: kv.history(jur).0,
                };
                (200, serde_json::to_value(s).unwrap())
            }
        },
        ("GET", ["", jur, "revisions", rev]) => {
            match kv.0.get(&revision_key(jur, rev.parse().unwrap_or(0))) {
                Some(env) => (200, serde_json::from_str(env).unwrap()),
                None => (404, poptill::error::ApiError::not_found("revision").body()),
            }
        }
        ("POST", ["", jur, "rollback"]) => {
            let r = verify_rollback(body, keys).and_then(|rb| {
                let target =
                    kv.0.get(&revision_key(jur, rb.rollback.to_revision))
                        .cloned();
                decide_rollback(&rb, kv.active(jur).as_ref(), target.as_deref(), keys, now)
            });
            match r {
                Ok(act) => {
                    kv.apply(&act);
                    (200, accepted(&act))
                }
                Err(e) => (e.to_api().status, e.body()),
            }
        }
        _ => (404, poptill::error::ApiError::not_found("route").body()),
    }
}

/// Serves the admin routes on a loopback port until the test process ends.
fn start_edge(keys: TrustedKeys) -> (String, Arc<Mutex<Kv>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let kv = Arc::new(Mutex::new(Kv::default()));
    let shared = kv.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut it = line.split_whitespace();
            let (method, path) = (
                it.next().unwrap_or("").to_string(),
                it.next().unwrap_or("").to_string(),
            );
            let (mut len, mut auth) = (0usize, String::new());
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    match k.to_ascii_lowercase().as_str() {
                        "content-length" => len = v.trim().parse().unwrap_or(0),
                        "authorization" => auth = v.trim().to_string(),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let body = String::from_utf8_lossy(&body).to_string();
            let (status, answer) = handle(
                &mut shared.lock().unwrap(),
                &keys,
                &method,
                &path,
                &auth,
                &body,
            );
            let payload = answer.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            );
        }
    });
    (url, kv)
}

#[test]
fn push_status_diff_and_rollback_against_a_loopback_edge() {
    let dir = tmp("edge");
    let (key, kid, public) = keygen(&dir, "author-1");
    let (stranger_key, _, _) = keygen(&dir, "stranger");
    let keys = TrustedKeys::from_json(&json!({ kid: public }).to_string()).unwrap();
    let (url, kv) = start_edge(keys);
    let out = dir.join("signed");
    let de = policies().join("DE.json");
    let de = de.to_str().unwrap();
    let edge_args = |cmd: &str| {
        vec![
            cmd.to_string(),
            "--url".into(),
            url.clone(),
            "--admin-key".into(),
            ADMIN.into(),
        ]
    };
    let call = |mut args: Vec<String>, extra: &[&str]| {
        args.extend(extra.iter().map(|s| s.to_string()));
        bin().args(&args).output().unwrap()
    };

    // Nothing active yet.
    let o = call(edge_args("status"), &["DE"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("no active bundle"));

    for rev in ["1", "2", "3"] {
        let o = sign(&key, &out.join(rev), &["--revision", rev], &[de]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let signed = out.join(rev).join("DE.signed.json");
        let o = call(edge_args("push"), &[signed.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(
            text(&o).contains(&format!("revision {rev} active")),
            "{}",
            text(&o)
        );
    }
    assert_eq!(kv.lock().unwrap().active("DE").unwrap().revision, 3);

    // Replaying revision 2 is refused with the edge's code; the admin key comes from env.
    let o = bin()
        .args([
            "push",
            "--url",
            &url,
            out.join("2/DE.signed.json").to_str().unwrap(),
        ])
        .env("POPTILL_ADMIN_KEY", ADMIN)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("policy_stale_revision"), "{}", text(&o));
    // A wrong admin key is refused.
    let o = run(&[
        "push",
        "--url",
        &url,
        "--admin-key",
        "nope",
        out.join("3/DE.signed.json").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("unauthorized"));
    // A bundle signed by an untrusted key is refused.
    let o = sign(
        &stranger_key,
        &dir.join("stranger"),
        &["--revision", "9"],
        &[de],
    );
    assert_eq!(o.status.code(), Some(0));
    let o = call(
        edge_args("push"),
        &[dir.join("stranger/DE.signed.json").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("policy_unknown_key"), "{}", text(&o));

    // diff against the active revision 3 shows a changed rate.
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(de).unwrap()).unwrap();
    v["manifest"]["revision"] = 4.into();
    v["tax"]["rates_ppm"]["food_and_drink"] = 70_000.into();
    let changed = dir.join("DE.json");
    std::fs::write(&changed, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let o = call(edge_args("diff"), &[changed.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let d = text(&o);
    assert!(
        d.contains("~ tax.rates_ppm.food_and_drink: 190000 -> 70000"),
        "{d}"
    );
    assert!(d.contains("~ manifest.revision: 3 -> 4"), "{d}");
    assert!(d.contains("~ manifest.author_kid:"), "{d}");

    // Roll back to revision 1.
    let o = call(edge_args("rollback"), &["--key", &key, "DE", "--to", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("rolled back from revision 3 to 1"),
        "{}",
        text(&o)
    );
    let o = call(edge_args("status"), &["DE"]);
    let s = text(&o);
    assert!(
        s.contains("revision 1 active (via Rollback, highest 3)"),
        "{s}"
    );
    assert_eq!(s.lines().filter(|l| l.contains(" rev ")).count(), 4, "{s}");
    // Rolling "back" to a higher revision is refused.
    let o = call(edge_args("rollback"), &["--key", &key, "DE", "--to", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("policy_rollback_not_older"),
        "{}",
        text(&o)
    );
    // Revision 4 goes above the highest ever active.
    let o = sign(&key, &dir.join("four"), &[], &[changed.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = call(
        edge_args("push"),
        &[dir.join("four/DE.signed.json").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(kv.lock().unwrap().active("DE").unwrap().revision, 4);
}
