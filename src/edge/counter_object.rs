//! A bare Durable Object counter: the floor `scripts/bench` compares one hot event's checkout throughput with.
//!
//! Each request increments one SQLite row and answers the new count. It does nothing else
//! (no ledger, no JSON state, no effects), so its throughput is what one Durable Object of
//! this Worker can do at best on the same machine. Reached only through the operator route
//! `POST /v1/admin/bench/counter/{name}` (one object per name).

use super::http::{internal, json};
use crate::error::ApiError;
use serde::Deserialize;
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

#[durable_object]
pub struct CounterObject {
    state: State,
}

#[derive(Deserialize)]
struct Count {
    n: i64,
}

impl CounterObject {
    fn increment(&self) -> Result<i64> {
        let sql = self.state.storage().sql();
        sql.exec(
            "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
            None,
        )?;
        let rows: Vec<Count> = sql
            .exec(
                "INSERT INTO counter (id, n) VALUES (1, 1) ON CONFLICT(id) DO UPDATE SET n = n + 1 RETURNING n",
                None,
            )?
            .to_array()?;
        Ok(rows.first().map(|r| r.n).unwrap_or(0))
    }
}

impl DurableObject for CounterObject {
    fn new(state: State, _env: Env) -> Self {
        CounterObject { state }
    }

    async fn fetch(&self, _req: Request) -> Result<Response> {
        let n = self.increment()?;
        Response::from_json(&serde_json::json!({ "count": n }))
    }
}

/// `POST /v1/admin/bench/counter/{name}`: one increment of the named counter object.
pub async fn increment(env: &Env, name: &str) -> std::result::Result<Response, ApiError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        return Err(ApiError::not_found("counter"));
    }
    let stub = env
        .durable_object("BENCH_COUNTERS")
        .and_then(|ns| ns.get_by_name(name))
        .map_err(internal)?;
    let mut resp = stub
        .fetch_with_str("https://counter/increment")
        .await
        .map_err(internal)?;
    let text = resp.text().await.map_err(internal)?;
    let count = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["count"].as_i64())
        .ok_or_else(|| {
            ApiError::new(
                503,
                "temporarily_unavailable",
                "The counter did not answer.",
            )
        })?;
    json(
        200,
        &crate::api::answers::Count {
            name: name.to_string(),
            count,
        },
    )
}
