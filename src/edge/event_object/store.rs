//! The event object's storage: its SQLite schema, the ledger's rows (loaded once, written per
//! command in one transaction), receipts, meta values, the store-and-forward key and the
//! `ObjectStore` the checkout's object side uses (CVC uses by key, receipts).

use super::*;

/// The object's CVC uses and receipts in SQLite, for `crate::checkout::object_side`.
pub(super) struct SqlStore<'a> {
    pub(super) sql: &'a worker::SqlStorage,
}

#[derive(Deserialize)]
struct KeyRow {
    idem_key: String,
}

#[derive(Deserialize)]
struct JsonRow {
    json: String,
}

impl ObjectStore for SqlStore<'_> {
    fn cvc_spender(
        &mut self,
        use_id: &str,
        now_ms: i64,
    ) -> std::result::Result<Option<String>, ApiError> {
        let sql = self.sql;
        sql.exec(
            "DELETE FROM cvc_spent WHERE expires_ms < ?",
            Some(vec![(now_ms as f64).into()]),
        )
        .map_err(crate::edge::http::internal)?;
        let rows: Vec<KeyRow> = sql
            .exec(
                "SELECT idem_key FROM cvc_spent WHERE use_id = ?",
                Some(vec![use_id.into()]),
            )
            .and_then(|c| c.to_array())
            .map_err(crate::edge::http::internal)?;
        if let Some(r) = rows.into_iter().next() {
            return Ok(Some(r.idem_key));
        }
        // Spent before the checkout machine kept the spender (the older table).
        #[derive(Deserialize)]
        struct N {
            n: i64,
        }
        let old: Vec<N> = sql
            .exec(
                "SELECT COUNT(*) AS n FROM cvc_uses WHERE use_id = ? AND expires_ms >= ?",
                Some(vec![use_id.into(), (now_ms as f64).into()]),
            )
            .and_then(|c| c.to_array())
            .map_err(crate::edge::http::internal)?;
        Ok((old.first().map(|r| r.n).unwrap_or(0) > 0).then(String::new))
    }

    fn spend_cvc(
        &mut self,
        use_id: &str,
        key: &str,
        expires_at_ms: i64,
    ) -> std::result::Result<(), ApiError> {
        self.sql
            .exec(
                "INSERT OR REPLACE INTO cvc_spent (use_id, idem_key, expires_ms) VALUES (?, ?, ?)",
                Some(vec![
                    use_id.into(),
                    key.into(),
                    (expires_at_ms as f64).into(),
                ]),
            )
            .map_err(crate::edge::http::internal)?;
        Ok(())
    }

    fn give_back_cvc(&mut self, use_id: &str) -> std::result::Result<(), ApiError> {
        self.sql
            .exec(
                "DELETE FROM cvc_spent WHERE use_id = ?",
                Some(vec![use_id.into()]),
            )
            .map_err(crate::edge::http::internal)?;
        Ok(())
    }

    fn receipt(&mut self, receipt_id: &str) -> std::result::Result<Option<String>, ApiError> {
        let rows: Vec<JsonRow> = self
            .sql
            .exec(
                "SELECT json FROM receipts WHERE id = ?",
                Some(vec![receipt_id.into()]),
            )
            .and_then(|c| c.to_array())
            .map_err(crate::edge::http::internal)?;
        Ok(rows.into_iter().next().map(|r| r.json))
    }

    fn store_receipt(
        &mut self,
        id: &str,
        order_id: &str,
        json: &str,
    ) -> std::result::Result<(), ApiError> {
        self.sql
            .exec(
                "INSERT OR REPLACE INTO receipts (id, order_id, json) VALUES (?, ?, ?)",
                Some(vec![id.into(), order_id.into(), json.into()]),
            )
            .map_err(crate::edge::http::internal)?;
        Ok(())
    }
}

impl EventObject {
    pub(super) fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    pub(super) fn ensure_schema(&self) -> Result<()> {
        let sql = self.sql();
        // Older layout (one JSON document in chunks), read once and moved to the rows below.
        sql.exec("CREATE TABLE IF NOT EXISTS ledger_state (chunk INTEGER PRIMARY KEY, data TEXT NOT NULL)", None)?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS ledger_head (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
            None,
        )?;
        sql.exec("CREATE TABLE IF NOT EXISTS ledger_rows (kind TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, id))", None)?;
        sql.exec("CREATE TABLE IF NOT EXISTS receipts (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, json TEXT NOT NULL)", None)?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
            None,
        )?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS cvc_uses (use_id TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL)",
            None,
        )?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS cvc_spent (use_id TEXT PRIMARY KEY, idem_key TEXT NOT NULL, expires_ms INTEGER NOT NULL)",
            None,
        )?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS handover (id TEXT PRIMARY KEY, json TEXT NOT NULL)",
            None,
        )?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, json TEXT NOT NULL, attempts INTEGER NOT NULL, next_ms INTEGER NOT NULL)",
            None,
        )?;
        crate::edge::telemetry::ensure_table(&sql)?;
        Ok(())
    }

    /// Loads the ledger from SQLite once per object start: the head row, the waiting room
    /// and one row per record (see `crate::ledger::Delta`). A ledger saved by the older
    /// single-document layout (`ledger_state`) is moved to rows on the way.
    pub(super) fn load(&self) -> Result<()> {
        if *self.loaded.borrow() {
            return Ok(());
        }
        self.ensure_schema()?;
        #[derive(Deserialize)]
        struct Kv {
            k: String,
            v: String,
        }
        #[derive(Deserialize)]
        struct Row {
            kind: String,
            id: String,
            data: String,
        }
        let sql = self.sql();
        let parts: Vec<Kv> = sql.exec("SELECT k, v FROM ledger_head", None)?.to_array()?;
        let part = |name: &str| parts.iter().find(|p| p.k == name).map(|p| p.v.as_str());
        let unreadable = || worker::Error::RustError("ledger state unreadable".into());
        if let Some(head) = part("head") {
            let rows: Vec<Row> = sql
                .exec("SELECT kind, id, data FROM ledger_rows", None)?
                .to_array()?;
            let ledger = EventLedger::from_rows(
                head,
                part("queue"),
                rows.iter()
                    .map(|r| (r.kind.as_str(), r.id.as_str(), r.data.as_str())),
            )
            .map_err(|_| unreadable())?;
            *self.ledger.borrow_mut() = Some(ledger);
        } else {
            #[derive(Deserialize)]
            struct Chunk {
                data: String,
            }
            let chunks: Vec<String> = sql
                .exec("SELECT data FROM ledger_state ORDER BY chunk", None)?
                .to_array::<Chunk>()?
                .into_iter()
                .map(|c| c.data)
                .collect();
            if !chunks.is_empty() {
                let mut ledger =
                    EventLedger::from_json_chunks(&chunks).map_err(|_| unreadable())?;
                let delta = ledger.full_delta().map_err(|_| unreadable())?;
                self.write_delta(delta)?;
                sql.exec("DELETE FROM ledger_state", None)?;
                *self.ledger.borrow_mut() = Some(ledger);
            }
        }
        *self.loaded.borrow_mut() = true;
        Ok(())
    }

    /// Writes what changed since the last save, in one SQLite transaction.
    pub(super) fn persist(&self) -> Result<()> {
        let delta = match self.ledger.borrow_mut().as_mut() {
            Some(l) => l
                .take_delta()
                .map_err(|_| worker::Error::RustError("encode".into()))?,
            None => return Ok(()),
        };
        self.write_delta(delta)
    }

    /// Writes a delta (head, waiting room, rows) inside the storage's `transactionSync`: all
    /// of it or, when any statement fails, none of it. A head written without its order row
    /// would hold stock for ever.
    pub(super) fn write_delta(&self, delta: Delta) -> Result<()> {
        let fault = self.injected_fault("persist_order_row");
        let sql = self.sql();
        let write = move || -> Result<()> {
            sql.exec(
                "INSERT OR REPLACE INTO ledger_head (k, v) VALUES ('head', ?)",
                Some(vec![delta.head.as_str().into()]),
            )?;
            if let Some(q) = &delta.queue {
                sql.exec(
                    "INSERT OR REPLACE INTO ledger_head (k, v) VALUES ('queue', ?)",
                    Some(vec![q.as_str().into()]),
                )?;
            }
            for r in &delta.rows {
                if fault && r.kind == "order" {
                    return Err(worker::Error::RustError(
                        "injected fault: order row not written".into(),
                    ));
                }
                match &r.data {
                    Some(data) => sql.exec(
                        "INSERT OR REPLACE INTO ledger_rows (kind, id, data) VALUES (?, ?, ?)",
                        Some(vec![
                            r.kind.into(),
                            r.id.as_str().into(),
                            data.as_str().into(),
                        ]),
                    )?,
                    None => sql.exec(
                        "DELETE FROM ledger_rows WHERE kind = ? AND id = ?",
                        Some(vec![r.kind.into(), r.id.as_str().into()]),
                    )?,
                };
            }
            Ok(())
        };
        self.transaction_sync(write)
    }

    /// Runs `f` inside `ctx.storage.transactionSync`: its SQL statements commit together, or
    /// roll back together when it fails.
    pub(super) fn transaction_sync(&self, f: impl FnOnce() -> Result<()> + 'static) -> Result<()> {
        let missing = || worker::Error::RustError("storage.transactionSync unavailable".into());
        let storage = self.storage_js.as_ref().ok_or_else(missing)?;
        let func = js_sys::Reflect::get(storage, &JsValue::from_str("transactionSync"))
            .map_err(worker::Error::from)?
            .dyn_into::<js_sys::Function>()
            .map_err(|_| missing())?;
        let body = Closure::once(move || -> std::result::Result<JsValue, JsValue> {
            // An error thrown out of the callback is what makes SQLite roll back.
            f().map(|()| JsValue::UNDEFINED)
                .map_err(|e| JsValue::from(js_sys::Error::new(&e.to_string())))
        });
        func.call1(storage, body.as_ref()).map(|_| ()).map_err(|e| {
            let message = e
                .dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
                .unwrap_or_else(|| "transaction failed".into());
            worker::Error::RustError(message)
        })
    }

    /// Test-only fault injection, for local runs only (`POPTILL_ENV` = `local`): an event
    /// whose title contains `[fault:<name>]` has that fault. `persist_order_row` fails every
    /// write of an order row after the head was written (the e2e test of the ledger's
    /// transaction). Never on in staging or production.
    pub(super) fn injected_fault(&self, name: &str) -> bool {
        if env_string(&self.env, "POPTILL_ENV").as_deref() != Some("local") {
            return false;
        }
        let marker = format!("[fault:{name}]");
        self.ledger
            .try_borrow()
            .ok()
            .and_then(|g| g.as_ref().map(|l| l.config().title.contains(&marker)))
            .unwrap_or(false)
    }

    pub(super) fn meta(&self, key: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct V {
            v: String,
        }
        self.sql()
            .exec("SELECT v FROM meta WHERE k = ?", Some(vec![key.into()]))
            .and_then(|c| c.to_array::<V>())
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .map(|r| r.v)
    }

    pub(super) fn keks(&self) -> std::result::Result<KekSet, ApiError> {
        crate::edge::vault::keks(&self.env)
    }

    pub(super) fn event_id(&self) -> String {
        self.ledger
            .borrow()
            .as_ref()
            .map(|l| l.config().event_id.clone())
            .unwrap_or_default()
    }

    /// The event's store-and-forward key, wrapped by the KEK; made on first use.
    pub(super) fn sf_key_wrapped(&self) -> std::result::Result<String, ApiError> {
        #[derive(Deserialize)]
        struct V {
            v: String,
        }
        let rows: Vec<V> = self
            .sql()
            .exec("SELECT v FROM meta WHERE k = 'sf_key'", None)
            .and_then(|c| c.to_array())
            .map_err(crate::edge::http::internal)?;
        if let Some(row) = rows.into_iter().next() {
            // After a master-key rotation, re-wrap under the current KEK on first use, so the
            // previous KEK can be retired without losing queued payments.
            let keks = self.keks()?;
            let current_prefix = format!("{}.", keks.current.id);
            if row.v.starts_with(&current_prefix) {
                return Ok(row.v);
            }
            let key =
                vault::unwrap_sf_key(&keks, &self.event_id(), &row.v).map_err(|e| e.to_api())?;
            let rewrapped = vault::wrap_sf_key(
                &keks,
                &self.event_id(),
                key.expose(),
                crate::edge::http::random::<12>()?,
            )
            .map_err(|e| e.to_api())?;
            self.sql()
                .exec(
                    "UPDATE meta SET v = ? WHERE k = 'sf_key'",
                    Some(vec![rewrapped.as_str().into()]),
                )
                .map_err(crate::edge::http::internal)?;
            return Ok(rewrapped);
        }
        let key = crate::edge::http::random::<32>()?;
        let wrapped = vault::wrap_sf_key(
            &self.keks()?,
            &self.event_id(),
            &key,
            crate::edge::http::random::<12>()?,
        )
        .map_err(|e| e.to_api())?;
        self.sql()
            .exec(
                "INSERT OR IGNORE INTO meta (k, v) VALUES ('sf_key', ?)",
                Some(vec![wrapped.as_str().into()]),
            )
            .map_err(crate::edge::http::internal)?;
        Ok(wrapped)
    }
}
