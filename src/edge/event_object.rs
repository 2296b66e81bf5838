//! The per-event Durable Object (SQLite-backed): the single writer of an event's ledger.

use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

#[durable_object]
pub struct EventObject {
    state: State,
    #[allow(dead_code)]
    env: Env,
}

impl DurableObject for EventObject {
    fn new(state: State, env: Env) -> Self {
        EventObject { state, env }
    }

    async fn fetch(&self, _req: Request) -> Result<Response> {
        let sql = self.state.storage().sql();
        sql.exec(
            "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
            None,
        )?;
        Response::from_json(&serde_json::json!({"ok": true}))
    }
}
