//! Merchant webhooks: batches of signed receipts, the signature header merchants verify,
//! and the retry schedule. Pure: the event object does the HTTP and the storage.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Receipts per delivery at most.
pub const MAX_BATCH: usize = 50;
/// How long receipts gather before a delivery (batching, off the request's path).
pub const BATCH_WINDOW_MS: i64 = 1_000;

/// The body of one delivery: `{"type":"receipts.batch","receipts":[<signed receipt>...]}`.
/// Each element is a signed receipt as stored (anyone can check it at /v1/receipts/verify).
pub fn batch_body(signed_receipts: &[String]) -> String {
    let receipts: Vec<serde_json::Value> = signed_receipts
        .iter()
        .filter_map(|r| serde_json::from_str(r).ok())
        .collect();
    let batch = Batch {
        kind: BatchKind::ReceiptsBatch,
        count: receipts.len(),
        receipts,
    };
    serde_json::to_string(&batch).unwrap_or_default()
}

/// One delivery's body (described in the OpenAPI document's `webhooks`).
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Batch {
    #[serde(rename = "type")]
    pub kind: BatchKind,
    pub count: usize,
    /// The signed receipts exactly as stored (their fields in the signed order).
    #[schemars(with = "Vec<crate::receipt::SignedReceipt>")]
    pub receipts: Vec<serde_json::Value>,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
pub enum BatchKind {
    #[serde(rename = "receipts.batch")]
    ReceiptsBatch,
}

fn mac(secret: &[u8], t_ms: i64, body: &str) -> Option<Vec<u8>> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    m.update(format!("poptill-webhook-v1\n{t_ms}\n").as_bytes());
    m.update(body.as_bytes());
    Some(m.finalize().into_bytes().to_vec())
}

/// The `Poptill-Signature` header: `t=<unix ms>,v1=<hex HMAC-SHA256>` over
/// `"poptill-webhook-v1\n" + t + "\n" + body`, keyed by the merchant's webhook secret.
pub fn signature_header(secret: &[u8], t_ms: i64, body: &str) -> String {
    let v1 = mac(secret, t_ms, body).map(hex::encode).unwrap_or_default();
    format!("t={t_ms},v1={v1}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookError {
    Malformed,
    BadSignature,
    TooOld,
}

/// What a merchant's server does with a delivery: checks the signature in constant time and
/// that the timestamp is within `tolerance_ms` of `now_ms` (replays are refused).
pub fn verify_header(
    secret: &[u8],
    header: &str,
    body: &str,
    now_ms: i64,
    tolerance_ms: i64,
) -> Result<(), WebhookError> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (t, v1) = t.zip(v1).ok_or(WebhookError::Malformed)?;
    if (now_ms - t).abs() > tolerance_ms {
        return Err(WebhookError::TooOld);
    }
    let expected = mac(secret, t, body).ok_or(WebhookError::Malformed)?;
    if bool::from(expected.ct_eq(&v1)) {
        Ok(())
    } else {
        Err(WebhookError::BadSignature)
    }
}

/// Delay before delivery attempt `attempts + 1` after `attempts` failures: 2 s doubling,
/// at most 10 minutes.
pub fn retry_delay_ms(attempts: u32) -> i64 {
    (2_000i64 << attempts.min(12)).min(600_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trips_and_catches_tampering_and_replay() {
        let secret = b"whsec_test_secret";
        let body = batch_body(&[r#"{"receipt":{"id":"rcpt_1"},"signature":{"kid":"r1"}}"#.into()]);
        let h = signature_header(secret, 1_000_000, &body);
        assert!(h.starts_with("t=1000000,v1="));
        assert_eq!(verify_header(secret, &h, &body, 1_000_500, 300_000), Ok(()));
        assert_eq!(
            verify_header(
                secret,
                &h,
                &body.replace("rcpt_1", "rcpt_2"),
                1_000_500,
                300_000
            ),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_header(b"other", &h, &body, 1_000_500, 300_000),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_header(secret, &h, &body, 1_000_000 + 400_000, 300_000),
            Err(WebhookError::TooOld)
        );
        assert_eq!(
            verify_header(secret, "garbage", &body, 1_000_000, 300_000),
            Err(WebhookError::Malformed)
        );
    }

    #[test]
    fn batches_keep_every_receipt_and_skip_unreadable_ones() {
        let body = batch_body(&["{\"a\":1}".into(), "not json".into(), "{\"b\":2}".into()]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["count"], 2);
        assert_eq!(v["receipts"][1]["b"], 2);
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(retry_delay_ms(0), 2_000);
        assert_eq!(retry_delay_ms(1), 4_000);
        assert!(retry_delay_ms(5) > retry_delay_ms(4));
        assert_eq!(retry_delay_ms(40), 600_000);
    }
}
