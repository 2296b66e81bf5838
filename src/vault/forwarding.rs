//! Store-and-forward sealing: a card kept for a queued authorization, sealed under the event
//! Durable Object's own key (wrapped by the KEK) so it outlives the short-lived data keys,
//! and bound to the event and the authorization it belongs to.

use super::aead::{associated_data, open, seal, NONCE_LEN};
use super::error::VaultError;
use super::keys::KekSet;
use crate::card::{Card, Expiry};
use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

const SF_LABEL: &str = "poptill-sf-card-v1";
const SF_CVC_LABEL: &str = "poptill-sf-card-cvc-v1";
const SF_KEY_LABEL: &str = "poptill-sf-key-v1";

/// Wraps an event's store-and-forward key under the current KEK: `kek_id.base64url(nonce |
/// sealed key)`. The object stores this string; the key itself is never stored in clear.
pub fn wrap_sf_key(
    keks: &KekSet,
    event_id: &str,
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
) -> Result<String, VaultError> {
    let kek = &keks.current;
    let aad = associated_data(SF_KEY_LABEL, &[event_id.as_bytes(), kek.id.as_bytes()]);
    let sealed = seal(kek.bytes(), &nonce, &aad, key).map_err(|_| VaultError::SealFailed)?;
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&sealed);
    Ok(format!("{}.{}", kek.id, URL_SAFE_NO_PAD.encode(blob)))
}

/// Opens a wrapped store-and-forward key with the KEK named inside it.
pub fn unwrap_sf_key(
    keks: &KekSet,
    event_id: &str,
    wrapped: &str,
) -> Result<Secret<[u8; 32]>, VaultError> {
    let corrupt = || VaultError::KeyRecordCorrupt {
        kid: "sf".to_string(),
    };
    let (kek_id, b64) = wrapped.split_once('.').ok_or_else(corrupt)?;
    let kek = keks.find(kek_id).ok_or_else(|| VaultError::KekUnknown {
        kek_id: kek_id.chars().take(40).collect(),
    })?;
    let blob = URL_SAFE_NO_PAD.decode(b64).map_err(|_| corrupt())?;
    let (nonce, sealed) = blob.split_first_chunk::<NONCE_LEN>().ok_or_else(corrupt)?;
    let aad = associated_data(SF_KEY_LABEL, &[event_id.as_bytes(), kek_id.as_bytes()]);
    let plain = Zeroizing::new(open(kek.bytes(), nonce, &aad, sealed).map_err(|_| corrupt())?);
    let key: [u8; 32] = plain.as_slice().try_into().map_err(|_| corrupt())?;
    Ok(Secret::new(key))
}

/// Seals a card for one queued authorization: number and expiry, and the CVC only when
/// given. The CVC is kept only for a payment already sent online whose outcome is unknown
/// (the acquirer timed out): repeating that exact request with its idempotency key is the
/// only way to complete it without charging twice. PCI DSS allows sensitive authentication
/// data before authorization completes, encrypted; the ledger drops the sealed card (CVC
/// included) the moment the payment reaches a final state.
pub fn seal_for_forwarding(
    sf_key: &Secret<[u8; 32]>,
    event_id: &str,
    auth_id: &str,
    card: &Card,
    cvc: Option<&Secret<String>>,
    nonce: [u8; NONCE_LEN],
) -> Result<String, VaultError> {
    let mut plain = Zeroizing::new(Vec::with_capacity(32));
    plain.push(card.exp_month);
    plain.extend_from_slice(&card.exp_year.to_be_bytes());
    let (label, prefix) = match cvc {
        Some(c) => {
            let c = c.expose().as_bytes();
            let len = u8::try_from(c.len()).map_err(|_| VaultError::SealFailed)?;
            plain.push(len);
            plain.extend_from_slice(c);
            (SF_CVC_LABEL, "sfv_")
        }
        None => (SF_LABEL, "sfc_"),
    };
    plain.extend_from_slice(card.number().expose().as_bytes());
    let aad = associated_data(label, &[event_id.as_bytes(), auth_id.as_bytes()]);
    let sealed = seal(sf_key.expose(), &nonce, &aad, &plain).map_err(|_| VaultError::SealFailed)?;
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&sealed);
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(blob)))
}

/// Opens a card sealed by [`seal_for_forwarding`] for the same event and authorization,
/// with its CVC when one was sealed.
pub fn open_for_forwarding(
    sf_key: &Secret<[u8; 32]>,
    event_id: &str,
    auth_id: &str,
    sealed: &str,
) -> Result<(Card, Option<Secret<String>>), VaultError> {
    let (label, b64) = match (sealed.strip_prefix("sfc_"), sealed.strip_prefix("sfv_")) {
        (Some(b), _) => (SF_LABEL, b),
        (_, Some(b)) => (SF_CVC_LABEL, b),
        _ => return Err(VaultError::InvalidToken),
    };
    let blob = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| VaultError::InvalidToken)?;
    let (nonce, ct) = blob
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(VaultError::InvalidToken)?;
    let aad = associated_data(label, &[event_id.as_bytes(), auth_id.as_bytes()]);
    let plain = Zeroizing::new(
        open(sf_key.expose(), nonce, &aad, ct).map_err(|_| VaultError::InvalidToken)?,
    );
    let (month, rest) = plain.split_first().ok_or(VaultError::InvalidToken)?;
    let (year, rest) = rest
        .split_first_chunk::<2>()
        .ok_or(VaultError::InvalidToken)?;
    let (cvc, number) = if label == SF_CVC_LABEL {
        let (len, rest) = rest.split_first().ok_or(VaultError::InvalidToken)?;
        let len = usize::from(*len);
        if rest.len() < len {
            return Err(VaultError::InvalidToken);
        }
        let (cvc, number) = rest.split_at(len);
        let cvc = String::from_utf8(cvc.to_vec()).map_err(|_| VaultError::InvalidToken)?;
        (Some(Secret::new(cvc)), number)
    } else {
        (None, rest)
    };
    let number =
        Secret::new(String::from_utf8(number.to_vec()).map_err(|_| VaultError::InvalidToken)?);
    let expiry = Expiry {
        month: *month,
        year: u16::from_be_bytes(*year),
    };
    Ok((Card::from_sealed(number, expiry)?, cvc))
}

/// A keyed fingerprint of a card number (hex), for per-card velocity limits: equal for
/// the same card within one event, useless to anyone without the event's key.
pub fn card_fingerprint(sf_key: &Secret<[u8; 32]>, card: &Card) -> String {
    match Hmac::<Sha256>::new_from_slice(sf_key.expose()) {
        Ok(mut mac) => {
            mac.update(b"poptill-card-fingerprint-v1\n");
            mac.update(card.number().expose().as_bytes());
            hex::encode(&mac.finalize().into_bytes()[..16])
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Kek;

    const NOW: i64 = 1_795_745_379_000;

    fn keks() -> KekSet {
        KekSet::new(Kek::from_bytes([7u8; 32]), vec![])
    }

    fn card(n: &str) -> Card {
        Card::parse(n, Expiry::new(12, 2034).unwrap(), Some("123"), NOW).unwrap()
    }

    #[test]
    fn sf_key_round_trips_and_is_bound_to_the_event() {
        let wrapped = wrap_sf_key(&keks(), "evt_a", &[9u8; 32], [1u8; 12]).unwrap();
        assert!(
            !wrapped.contains("CQkJ"),
            "no clear key bytes in the wrapped form"
        );
        assert_eq!(
            unwrap_sf_key(&keks(), "evt_a", &wrapped).unwrap().expose(),
            &[9u8; 32]
        );
        assert!(unwrap_sf_key(&keks(), "evt_b", &wrapped).is_err());
        let other = KekSet::new(Kek::from_bytes([8u8; 32]), vec![]);
        assert!(unwrap_sf_key(&other, "evt_a", &wrapped).is_err());
    }

    #[test]
    fn sealed_card_opens_only_for_its_event_and_authorization() {
        let key = Secret::new([3u8; 32]);
        let c = card("4242424242424242");
        let sealed = seal_for_forwarding(&key, "evt_a", "auth_1", &c, None, [2u8; 12]).unwrap();
        assert!(sealed.starts_with("sfc_") && !sealed.contains("4242"));
        let (opened, cvc) = open_for_forwarding(&key, "evt_a", "auth_1", &sealed).unwrap();
        assert_eq!(opened.number().expose(), "4242424242424242");
        assert_eq!((opened.exp_month, opened.exp_year), (12, 2034));
        assert!(
            cvc.is_none() && opened.cvc().is_none(),
            "no CVC unless one was sealed"
        );
        assert!(open_for_forwarding(&key, "evt_a", "auth_2", &sealed).is_err());
        assert!(open_for_forwarding(&key, "evt_b", "auth_1", &sealed).is_err());
        assert!(open_for_forwarding(&Secret::new([4u8; 32]), "evt_a", "auth_1", &sealed).is_err());
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(
            open_for_forwarding(&key, "evt_a", "auth_1", &String::from_utf8(bytes).unwrap())
                .is_err()
        );
    }

    #[test]
    fn a_payment_of_unknown_outcome_keeps_its_cvc_sealed_and_bound() {
        let key = Secret::new([3u8; 32]);
        let c = Card::parse(
            "378282246310005",
            Expiry::new(12, 2034).unwrap(),
            Some("1234"),
            NOW,
        )
        .unwrap();
        let cvc = Secret::new("1234".to_string());
        let sealed =
            seal_for_forwarding(&key, "evt_a", "auth_1", &c, Some(&cvc), [2u8; 12]).unwrap();
        assert!(sealed.starts_with("sfv_"));
        let (opened, got) = open_for_forwarding(&key, "evt_a", "auth_1", &sealed).unwrap();
        assert_eq!(opened.number().expose(), "378282246310005");
        assert_eq!(got.map(|c| c.expose().clone()).as_deref(), Some("1234"));
        assert!(open_for_forwarding(&key, "evt_a", "auth_2", &sealed).is_err());
        // A with-CVC blob relabelled as a plain one (or the reverse) does not open.
        let swapped = sealed.replacen("sfv_", "sfc_", 1);
        assert!(open_for_forwarding(&key, "evt_a", "auth_1", &swapped).is_err());
        let plain = seal_for_forwarding(&key, "evt_a", "auth_1", &c, None, [2u8; 12]).unwrap();
        assert!(
            open_for_forwarding(&key, "evt_a", "auth_1", &plain.replacen("sfc_", "sfv_", 1))
                .is_err()
        );
    }

    #[test]
    fn fingerprints_are_stable_per_card_and_key() {
        let k1 = Secret::new([3u8; 32]);
        let k2 = Secret::new([5u8; 32]);
        let a = card_fingerprint(&k1, &card("4242424242424242"));
        assert_eq!(a, card_fingerprint(&k1, &card("4242424242424242")));
        assert_ne!(a, card_fingerprint(&k1, &card("5555555555554444")));
        assert_ne!(a, card_fingerprint(&k2, &card("4242424242424242")));
        assert_eq!(a.len(), 32);
    }
}
