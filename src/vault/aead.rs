//! The one ChaCha20-Poly1305 (RFC 8439) wrapper the vault seals and opens with.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::Zeroizing;

/// Length of a ChaCha20-Poly1305 nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of the Poly1305 tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// Encrypts `plaintext` and authenticates it together with `aad`. Returns ciphertext
/// followed by the 16-byte tag. A nonce must never repeat under one key: callers pass
/// fresh random bytes. Fails only for inputs beyond the cipher's 256 GiB limit.
pub fn seal(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, AeadError> {
    ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| AeadError)
}

/// Checks the tag and decrypts. Any change to key, nonce, `aad` or ciphertext fails.
/// The plaintext is zeroed when dropped.
pub fn open(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AeadError> {
    ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext_and_tag,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| AeadError)
}

/// Sealing or opening failed. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AeadError;

/// Builds associated data from a domain label and length-prefixed fields, so that no two
/// different field lists give the same bytes (`("ab", "c")` differs from `("a", "bc")`).
pub fn associated_data(label: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut aad =
        Vec::with_capacity(label.len() + 1 + fields.iter().map(|f| 4 + f.len()).sum::<usize>());
    aad.extend_from_slice(label.as_bytes());
    aad.push(0);
    for field in fields {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(field);
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8439 section 2.8.2: the AEAD_CHACHA20_POLY1305 test vector.
    #[test]
    fn rfc8439_section_2_8_2_vector() {
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let key: [u8; 32] =
            hex::decode("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
                .unwrap()
                .try_into()
                .unwrap();
        // constant 07000000 || iv 4041424344454647
        let nonce: [u8; 12] = hex::decode("070000004041424344454647")
            .unwrap()
            .try_into()
            .unwrap();
        let expected_ciphertext = hex::decode(concat!(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6",
            "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36",
            "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc",
            "3ff4def08e4b7a9de576d26586cec64b6116",
        ))
        .unwrap();
        let expected_tag = hex::decode("1ae10b594f09e26a7e902ecbd0600691").unwrap();

        let sealed = seal(&key, &nonce, &aad, plaintext).unwrap();
        assert_eq!(sealed.len(), plaintext.len() + TAG_LEN);
        assert_eq!(&sealed[..plaintext.len()], expected_ciphertext.as_slice());
        assert_eq!(&sealed[plaintext.len()..], expected_tag.as_slice());

        let opened = open(&key, &nonce, &aad, &sealed).unwrap();
        assert_eq!(opened.as_slice(), plaintext.as_slice());

        let mut bad_aad = aad.clone();
        bad_aad[0] ^= 1;
        assert_eq!(open(&key, &nonce, &bad_aad, &sealed), Err(AeadError));
        let mut bad_tag = sealed.clone();
        let last = bad_tag.len() - 1;
        bad_tag[last] ^= 0x80;
        assert_eq!(open(&key, &nonce, &aad, &bad_tag), Err(AeadError));
    }

    #[test]
    fn associated_data_is_unambiguous() {
        assert_ne!(
            associated_data("x", &[b"ab", b"c"]),
            associated_data("x", &[b"a", b"bc"])
        );
        assert_ne!(associated_data("x", &[b"a"]), associated_data("y", &[b"a"]));
    }
}
