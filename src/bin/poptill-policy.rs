//! `poptill-policy`: the policy authors' tool: keygen, validate, sign, diff, push, status,
//! rollback. Exit codes: 0 ok, 1 validation problem or refusal, 2 usage, 3 network/server.
//! Native only; on wasm32 it builds as an empty stub so `cargo build --target wasm32` works.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(cli::run(&args));
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use poptill::policy::{
        derive_kid, encode_public_key, sign_bundle, sign_rollback, signing_key_from_seed,
        validate_value, ActivePointer, HistoryEntry, RollbackStatement, SignedBundle,
    };
    use poptill::secret::Secret;
    use serde::{Deserialize, Serialize};
    use serde_json::Value;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    pub const OK: i32 = 0;
    pub const REFUSED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NETWORK: i32 = 3;

    const HELP: &str = "\
poptill-policy: write, sign and ship jurisdictional policy bundles

USAGE:
  poptill-policy keygen --out FILE [--kid KID]
  poptill-policy validate FILE...
  poptill-policy sign --key FILE [--kid KID] [--revision N] --out DIR FILE...
  poptill-policy diff --url URL [--admin-key K] FILE
  poptill-policy push --url URL [--admin-key K] SIGNED_FILE
  poptill-policy status --url URL [--admin-key K] JURISDICTION
  poptill-policy rollback --url URL [--admin-key K] --key FILE [--kid KID] JURISDICTION --to REV

The admin key may also come from POPTILL_ADMIN_KEY.
Exit codes: 0 ok, 1 validation problem or refusal, 2 usage, 3 network or server error.";

    /// A failed command: its exit code and what to tell the user.
    struct Fail(i32, String);

    fn usage(msg: impl Into<String>) -> Fail {
        Fail(USAGE, format!("{}\n\n{HELP}", msg.into()))
    }

    fn refused(msg: impl Into<String>) -> Fail {
        Fail(REFUSED, msg.into())
    }

    /// Parsed flags and positional arguments.
    struct Args {
        flags: BTreeMap<String, String>,
        positional: Vec<String>,
    }

    fn parse(args: &[String], with_value: &[&str]) -> Result<Args, Fail> {
        let mut flags = BTreeMap::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let (name, inline) = match name.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (name, None),
                };
                if !with_value.contains(&name) {
                    return Err(usage(format!("unknown option --{name}")));
                }
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| usage(format!("--{name} needs a value")))?,
                };
                flags.insert(name.to_string(), value);
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Args { flags, positional })
    }

    impl Args {
        fn required(&self, name: &str) -> Result<&str, Fail> {
            self.flags
                .get(name)
                .map(String::as_str)
                .ok_or_else(|| usage(format!("--{name} is required")))
        }
        fn optional(&self, name: &str) -> Option<&str> {
            self.flags.get(name).map(String::as_str)
        }
    }

    pub fn run(args: &[String]) -> i32 {
        let Some((cmd, rest)) = args.split_first() else {
            eprintln!("{HELP}");
            return USAGE;
        };
        let result = match cmd.as_str() {
            "keygen" => keygen(rest),
            "validate" => validate(rest),
            "sign" => sign(rest),
            "diff" => diff(rest),
            "push" => push(rest),
            "status" => status(rest),
            "rollback" => rollback(rest),
            "help" | "--help" | "-h" => {
                println!("{HELP}");
                Ok(())
            }
            other => Err(usage(format!("unknown command {other:?}"))),
        };
        match result {
            Ok(()) => OK,
            Err(Fail(code, msg)) => {
                eprintln!("error: {msg}");
                code
            }
        }
    }

    // ----- keys ------------------------------------------------------------------------

    /// The private key file `keygen` writes (mode 0600).
    #[derive(Serialize, Deserialize)]
    struct KeyFile {
        kid: String,
        alg: String,
        public_key: String,
        /// Standard base64 of the 32-byte Ed25519 seed.
        secret_key: String,
    }

    fn b64() -> base64::engine::GeneralPurpose {
        base64::engine::general_purpose::STANDARD
    }

    fn keygen(args: &[String]) -> Result<(), Fail> {
        use base64::Engine;
        use std::io::Write;
        let a = parse(args, &["out", "kid"])?;
        let out = PathBuf::from(a.required("out")?);
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| Fail(NETWORK, format!("no randomness from the system: {e}")))?;
        let seed = Secret::new(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        let key = signing_key_from_seed(seed.expose());
        let public = key.verifying_key();
        let kid = a
            .optional("kid")
            .map(str::to_string)
            .unwrap_or_else(|| derive_kid(&public));
        let file = KeyFile {
            kid: kid.clone(),
            alg: "Ed25519".into(),
            public_key: encode_public_key(&public),
            secret_key: b64().encode(seed.expose()),
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| refused(format!("cannot encode the key file: {e}")))?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&out)
            .map_err(|e| refused(format!("cannot create {}: {e}", out.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .map_err(|e| refused(format!("cannot write {}: {e}", out.display())))?;
        println!("kid: {kid}");
        println!("public_key: {}", file.public_key);
        println!(
            "add to POLICY_KEYS: {}",
            serde_json::json!({ kid: file.public_key })
        );
        Ok(())
    }

    fn read_key(path: &str) -> Result<(String, ed25519_dalek::SigningKey), Fail> {
        use base64::Engine;
        let text = std::fs::read_to_string(path)
            .map_err(|e| refused(format!("cannot read key file {path}: {e}")))?;
        let kf: KeyFile = serde_json::from_str(&text)
            .map_err(|e| refused(format!("{path} is not a poptill key file: {e}")))?;
        let raw = Secret::new(
            b64()
                .decode(kf.secret_key.as_bytes())
                .map_err(|_| refused(format!("{path}: secret_key is not base64")))?,
        );
        let seed: [u8; 32] = raw
            .expose()
            .as_slice()
            .try_into()
            .map_err(|_| refused(format!("{path}: secret_key is not 32 bytes")))?;
        let seed = Secret::new(seed);
        let key = signing_key_from_seed(seed.expose());
        if encode_public_key(&key.verifying_key()) != kf.public_key {
            return Err(refused(format!(
                "{path}: public_key does not belong to secret_key"
            )));
        }
        Ok((kf.kid, key))
    }

    // ----- files -----------------------------------------------------------------------

    /// Reads a bundle file: a bare bundle, or a signed envelope (its `bundle` is returned).
    fn read_bundle(path: &Path) -> Result<Value, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
        match v {
            Value::Object(mut o) if o.contains_key("signature") && o.contains_key("bundle") => {
                Ok(o.remove("bundle").unwrap_or(Value::Null))
            }
            other => Ok(other),
        }
    }

    fn validate(args: &[String]) -> Result<(), Fail> {
        let a = parse(args, &[])?;
        if a.positional.is_empty() {
            return Err(usage("validate needs at least one FILE"));
        }
        let mut total = 0usize;
        for f in &a.positional {
            if is_json_schema(Path::new(f)) {
                println!("{f}: skipped (a JSON Schema, not a bundle)");
                continue;
            }
            let problems = match read_bundle(Path::new(f)) {
                Err(msg) => vec![format!("{f}: {msg}")],
                Ok(v) => match validate_value(&v) {
                    Ok(_) => vec![],
                    Err(ps) => ps
                        .iter()
                        .map(|p| format!("{f}: {}: {}", display_path(&p.path), p.message))
                        .collect(),
                },
            };
            if problems.is_empty() {
                println!("{f}: ok");
            }
            for p in &problems {
                println!("{p}");
            }
            total += problems.len();
        }
        if total == 0 {
            Ok(())
        } else {
            Err(refused(format!(
                "{total} problem(s) in {} file(s)",
                a.positional.len()
            )))
        }
    }

    /// policies/schema.json sits beside the bundles, so `validate policies/*.json` skips it.
    fn is_json_schema(path: &Path) -> bool {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v.get("$schema").is_some())
    }

    fn display_path(p: &str) -> &str {
        if p.is_empty() {
            "(bundle)"
        } else {
            p
        }
    }

    fn sign(args: &[String]) -> Result<(), Fail> {
        let a = parse(args, &["key", "kid", "out", "revision"])?;
        let (file_kid, key) = read_key(a.required("key")?)?;
        let kid = a.optional("kid").unwrap_or(&file_kid).to_string();
        let out = PathBuf::from(a.required("out")?);
        let revision = a
            .optional("revision")
            .map(|r| {
                r.parse::<u64>()
                    .map_err(|_| usage("--revision must be a whole number"))
            })
            .transpose()?;
        if a.positional.is_empty() {
            return Err(usage("sign needs at least one FILE"));
        }
        // Check every file first: nothing is written unless all are valid.
        let mut bundles = Vec::new();
        let mut problems = Vec::new();
        for f in &a.positional {
            let path = Path::new(f);
            match read_bundle(path) {
                Err(msg) => problems.push(format!("{f}: {msg}")),
                Ok(mut v) => {
                    if let Some(m) = v.get_mut("manifest").and_then(Value::as_object_mut) {
                        m.insert("author_kid".into(), kid.clone().into());
                        if let Some(r) = revision {
                            m.insert("revision".into(), r.into());
                        }
                    }
                    match validate_value(&v) {
                        Ok(b) => bundles.push((path, v, b)),
                        Err(ps) => problems.extend(
                            ps.iter()
                                .map(|p| format!("{f}: {}: {}", display_path(&p.path), p.message)),
                        ),
                    }
                }
            }
        }
        if !problems.is_empty() {
            for p in &problems {
                println!("{p}");
            }
            return Err(refused(format!(
                "{} problem(s); nothing signed",
                problems.len()
            )));
        }
        std::fs::create_dir_all(&out)
            .map_err(|e| refused(format!("cannot create {}: {e}", out.display())))?;
        for (path, v, b) in bundles {
            let env = sign_bundle(&v, &kid, &key);
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("bundle")
                .trim_end_matches(".signed");
            let dest = out.join(format!("{stem}.signed.json"));
            let text = serde_json::to_string_pretty(&env)
                .map_err(|e| refused(format!("cannot encode: {e}")))?;
            std::fs::write(&dest, text + "\n")
                .map_err(|e| refused(format!("cannot write {}: {e}", dest.display())))?;
            println!(
                "{}: {} revision {} hash {} -> {}",
                path.display(),
                b.jurisdiction,
                b.manifest.revision,
                poptill::policy::bundle_hash(&v),
                dest.display()
            );
        }
        Ok(())
    }

    // ----- HTTP ------------------------------------------------------------------------

    struct Edge {
        base: String,
        admin_key: Secret<String>,
        agent: ureq::Agent,
    }

    fn edge(a: &Args) -> Result<Edge, Fail> {
        let base = a.required("url")?.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(usage("--url must start with http:// or https://"));
        }
        let key = match a.optional("admin-key") {
            Some(k) => k.to_string(),
            None => std::env::var("POPTILL_ADMIN_KEY").map_err(|_| {
                usage("the admin key is needed: --admin-key K or POPTILL_ADMIN_KEY")
            })?,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(Edge {
            base,
            admin_key: Secret::new(key),
            agent,
        })
    }

    impl Edge {
        /// Sends a request; returns the status and the body as JSON (Null if empty).
        fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Value), Fail> {
            let url = format!("{}{}", self.base, path);
            let auth = format!("Bearer {}", self.admin_key.expose());
            let result = match (method, body) {
                ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
                ("PUT", Some(b)) => self
                    .agent
                    .put(&url)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .send(b),
                (_, b) => self
                    .agent
                    .post(&url)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .send(b.unwrap_or("")),
            };
            let mut resp = result.map_err(|e| Fail(NETWORK, format!("{method} {url}: {e}")))?;
            let status = resp.status().as_u16();
            let text = resp
                .body_mut()
                .read_to_string()
                .map_err(|e| Fail(NETWORK, format!("{method} {url}: reading the answer: {e}")))?;
            let json = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            };
            Ok((status, json))
        }

        /// Turns an error answer into a failure with the edge's code, message and problems.
        fn check(&self, status: u16, body: &Value) -> Result<(), Fail> {
            if (200..300).contains(&status) {
                return Ok(());
            }
            let err = &body["error"];
            let code = err["code"].as_str().unwrap_or("error");
            let msg = err["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            let mut text = format!("the edge refused ({status} {code}): {msg}");
            if let Some(ps) = err["problems"].as_array() {
                for p in ps {
                    text.push_str(&format!(
                        "\n  {}: {}",
                        p["path"].as_str().unwrap_or(""),
                        p["message"].as_str().unwrap_or("")
                    ));
                }
            }
            let exit = if status >= 500 || status == 0 {
                NETWORK
            } else {
                REFUSED
            };
            Err(Fail(exit, text))
        }

        fn status(&self, jur: &str) -> Result<Status, Fail> {
            let (code, body) = self.call("GET", &format!("/v1/admin/policies/{jur}"), None)?;
            if code == 404 {
                return Ok(Status {
                    active: None,
                    history: vec![],
                });
            }
            self.check(code, &body)?;
            serde_json::from_value(body).map_err(|e| {
                Fail(
                    NETWORK,
                    format!("the edge's status answer is not understood: {e}"),
                )
            })
        }
    }

    #[derive(Deserialize)]
    struct Status {
        active: Option<ActivePointer>,
        #[serde(default)]
        history: Vec<HistoryEntry>,
    }

    fn one_positional(a: &Args, what: &str) -> Result<String, Fail> {
        match a.positional.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(usage(format!("expected exactly one {what}"))),
        }
    }

    fn push(args: &[String]) -> Result<(), Fail> {
        let a = parse(args, &["url", "admin-key"])?;
        let file = one_positional(&a, "SIGNED_FILE")?;
        let e = edge(&a)?;
        let text = std::fs::read_to_string(&file)
            .map_err(|err| refused(format!("cannot read {file}: {err}")))?;
        let env: SignedBundle = serde_json::from_str(&text).map_err(|err| {
            refused(format!(
                "{file} is not a signed bundle (run `sign` first): {err}"
            ))
        })?;
        let body = serde_json::to_string(&env).map_err(|err| refused(err.to_string()))?;
        let (code, answer) = e.call("PUT", "/v1/admin/policies", Some(&body))?;
        e.check(code, &answer)?;
        let active = &answer["active"];
        println!(
            "{}: revision {} active, hash {}{}",
            answer["jurisdiction"].as_str().unwrap_or("?"),
            active["revision"],
            active["hash"].as_str().unwrap_or("?"),
            if answer["unchanged"].as_bool() == Some(true) {
                " (unchanged: it was already active)"
            } else {
                ""
            }
        );
        Ok(())
    }

    fn status(args: &[String]) -> Result<(), Fail> {
        let a = parse(args, &["url", "admin-key"])?;
        let jur = one_positional(&a, "JURISDICTION")?;
        let e = edge(&a)?;
        let s = e.status(&jur)?;
        match &s.active {
            None => println!("{jur}: no active bundle (the compiled-in default applies)"),
            Some(p) => println!(
                "{jur}: revision {} active (via {:?}, highest {}), hash {}",
                p.revision, p.via, p.highest_revision, p.hash
            ),
        }
        for h in &s.history {
            println!(
                "  {:>6}  rev {:<5} {:?}{}  kid {}  hash {}",
                h.activated_ms,
                h.revision,
                h.via,
                h.from_revision
                    .map(|f| format!(" from {f}"))
                    .unwrap_or_default(),
                h.kid,
                h.hash
            );
        }
        Ok(())
    }

    fn rollback(args: &[String]) -> Result<(), Fail> {
        let a = parse(args, &["url", "admin-key", "key", "kid", "to"])?;
        let jur = one_positional(&a, "JURISDICTION")?;
        let to: u64 = a
            .required("to")?
            .parse()
            .map_err(|_| usage("--to must be a revision number"))?;
        let (file_kid, key) = read_key(a.required("key")?)?;
        let kid = a.optional("kid").unwrap_or(&file_kid).to_string();
        let e = edge(&a)?;
        let Some(active) = e.status(&jur)?.active else {
            return Err(refused(format!("{jur} has no active bundle to roll back")));
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let statement = RollbackStatement {
            jurisdiction: jur.clone(),
            from_revision: active.revision,
            to_revision: to,
            created_ms: now_ms,
        };
        let env = sign_rollback(&statement, &kid, &key);
        let body = serde_json::to_string(&env).map_err(|err| refused(err.to_string()))?;
        let (code, answer) = e.call(
            "POST",
            &format!("/v1/admin/policies/{jur}/rollback"),
            Some(&body),
        )?;
        e.check(code, &answer)?;
        println!(
            "{jur}: rolled back from revision {} to {}",
            active.revision, answer["active"]["revision"]
        );
        Ok(())
    }

    // ----- diff ------------------------------------------------------------------------

    fn diff(args: &[String]) -> Result<(), Fail> {
        let a = parse(args, &["url", "admin-key"])?;
        let file = one_positional(&a, "FILE")?;
        let local = read_bundle(Path::new(&file)).map_err(|m| refused(format!("{file}: {m}")))?;
        let jur = local["jurisdiction"]
            .as_str()
            .ok_or_else(|| refused(format!("{file}: no jurisdiction")))?
            .to_string();
        let e = edge(&a)?;
        let status = e.status(&jur)?;
        let remote = match &status.active {
            None => {
                println!("{jur}: no active bundle on the edge; everything below is new");
                Value::Object(Default::default())
            }
            Some(p) => {
                let (code, body) = e.call(
                    "GET",
                    &format!("/v1/admin/policies/{jur}/revisions/{}", p.revision),
                    None,
                )?;
                e.check(code, &body)?;
                println!(
                    "{jur}: active revision {} (hash {}) -> {file}",
                    p.revision, p.hash
                );
                body.get("bundle").cloned().unwrap_or(body)
            }
        };
        let mut lines = Vec::new();
        json_diff("", &remote, &local, &mut lines);
        if lines.is_empty() {
            println!("no differences");
        }
        for l in lines {
            println!("{l}");
        }
        Ok(())
    }

    /// Lists differences by field path: `- path: old`, `+ path: new`, `~ path: old -> new`.
    pub fn json_diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match (old, new) {
            (Value::Object(a), Value::Object(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    match (a.get(k), b.get(k)) {
                        (Some(x), Some(y)) => json_diff(&join(k), x, y, out),
                        (Some(x), None) => out.push(format!("- {}: {x}", join(k))),
                        (None, Some(y)) => out.push(format!("+ {}: {y}", join(k))),
                        (None, None) => {}
                    }
                }
            }
            (x, y) if x != y => out.push(format!("~ {}: {x} -> {y}", display_path(path))),
            _ => {}
        }
    }
}
