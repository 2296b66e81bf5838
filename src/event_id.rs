//! Event ids the edge recognizes without storage: `evt_<16 hex random><16 hex tag>`, the
//! tag an HMAC of the random part under the receipt keys (`RECEIPT_KEY`, any key of the set,
//! so ids survive a rotation while the old key is kept).
//!
//! An event id is public (it is in the script tag), so anyone can send a made-up one. A
//! Durable Object is created (and its schema written) the first time a name is addressed;
//! the Worker asks [`is_genuine`] before it addresses one, so an id the edge never made
//! costs a 404 and no object (1 in 2^64 for a guess). Ids made before tags existed are not
//! recognized.

use crate::receipt::{self, ReceiptKeys};

const DOMAIN: &[u8] = b"poptill-event-id-v1\n";
const RANDOM_HEX: usize = 16;
const TAG_HEX: usize = 16;

/// A new event id from 8 fresh random bytes, tagged under the current key.
pub fn new(keys: &ReceiptKeys, random: [u8; 8]) -> String {
    let r = hex::encode(random);
    let tag = receipt::tags(keys, DOMAIN, r.as_bytes())
        .first()
        .map(|t| hex::encode(&t[..TAG_HEX / 2]))
        .unwrap_or_default();
    format!("evt_{r}{tag}")
}

/// Whether the edge made this id (under any key of the set). Constant time per key.
pub fn is_genuine(keys: &ReceiptKeys, id: &str) -> bool {
    let Some(rest) = id.strip_prefix("evt_") else {
        return false;
    };
    if rest.len() != RANDOM_HEX + TAG_HEX
        || !rest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return false;
    }
    let (r, tag) = rest.split_at(RANDOM_HEX);
    receipt::tags(keys, DOMAIN, r.as_bytes()).iter().any(|t| {
        hex::encode(&t[..TAG_HEX / 2])
            .bytes()
            .zip(tag.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[(&str, u8)]) -> ReceiptKeys {
        ReceiptKeys::from_raw(
            k.iter()
                .map(|(kid, b)| (kid.to_string(), vec![*b; 32]))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn an_id_the_edge_made_is_recognized_and_a_made_up_one_is_not() {
        let k = keys(&[("r1", 1)]);
        let id = new(&k, [7; 8]);
        assert!(id.starts_with("evt_0707070707070707"), "{id}");
        assert_eq!(id.len(), 4 + 32);
        assert!(crate::ledger::valid_id(&id));
        assert!(is_genuine(&k, &id));
        // Any other tag, a legacy id, other shapes: not ours.
        let mut forged = id.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        for other in [
            forged.as_str(),
            "evt_ca42a3c8c700",
            "evt_07070707070707070000000000000000",
            &id.to_uppercase(),
            &id[4..],
            "",
        ] {
            assert!(!is_genuine(&k, other), "{other}");
        }
        // Under another key set the id is unknown.
        assert!(!is_genuine(&keys(&[("r2", 2)]), &id));
    }

    #[test]
    fn ids_survive_a_key_rotation_while_the_old_key_is_kept() {
        let old = keys(&[("r1", 1)]);
        let id = new(&old, [3; 8]);
        let rotated = keys(&[("r2", 2), ("r1", 1)]);
        assert!(is_genuine(&rotated, &id));
        let fresh = new(&rotated, [4; 8]);
        assert!(is_genuine(&rotated, &fresh));
        assert!(!is_genuine(&old, &fresh), "made under the new key");
        assert!(!is_genuine(&keys(&[("r2", 2)]), &id), "the old key dropped");
    }
}
