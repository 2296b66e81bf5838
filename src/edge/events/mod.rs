//! Events in the Worker: the admin routes (`admin`), the public routes (`public`) and the
//! staff-terminal handover (`handover`), over the isolate's routing state. Every call to
//! an event's Durable Object goes through `edge::object_client`; everything that must not
//! be lost or happen twice is decided there, in the event's object (`event_object`).

mod admin;
mod handover;
mod public;

pub use admin::*;
pub use handover::*;
pub use public::*;

use super::http::{env_string, internal, json, random, Ctx};
use super::merchants::Principal;
use super::object_client::{self as object, config};
use crate::checkout::request::{quote_cart, CartItem};
use crate::checkout::Answer;
use crate::error::ApiError;
use crate::ledger::{Command, EventConfig, QueueConfig, QueueMode, Reply};
use crate::money::Currency;
use crate::policy::{BuyerField, LoadedBundle};
use crate::receipt;
use crate::routing::Router;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use worker::{Env, Request, Response};

thread_local! {
    static ROUTER: RefCell<Option<(String, Router)>> = const { RefCell::new(None) };
}

/// The event's config if `who` may manage it; otherwise 404, as if it did not exist.
async fn managed(
    env: &Env,
    who: &Principal,
    event_id: &str,
    now_ms: i64,
) -> Result<Arc<EventConfig>, ApiError> {
    let c = config(env, event_id, now_ms).await?;
    if who.may_manage(&c.merchant_id) {
        Ok(c)
    } else {
        Err(ApiError::not_found("event"))
    }
}
