//! The sealed form of a session in a shared store: AES-256-GCM (aws-lc-rs) with a random nonce per write and the hashed session id as associated data, under a key ring whose first key seals and every key opens; never shows or logs a key.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// A session key's length: 256 bits.
pub const KEY_BYTES: usize = 32;
/// The first byte of every sealed value: this format.
const FORMAT: u8 = 1;
/// How many bytes of a key's SHA-256 name it in a sealed value.
const KEY_ID_BYTES: usize = 8;
/// The format byte, the key id and the nonce, before the ciphertext.
const HEADER_BYTES: usize = 1 + KEY_ID_BYTES + NONCE_LEN;

/// Why a key's text is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Neither 64 hex digits nor base64 of 32 bytes.
    #[error("a session key is 32 bytes written as 64 hex digits or in base64")]
    Encoding,
}

/// Why a sealed value could not be made or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The system's random generator failed.
    #[error("the system's random generator failed")]
    Random,
    /// Not a value this format describes.
    #[error("not a sealed session")]
    Malformed,
    /// Sealed with a key that is not configured (any more).
    #[error("sealed with a key that is not configured")]
    UnknownKey,
    /// The value, or the id it was sealed for, was changed.
    #[error("the sealed session does not open: changed, or sealed for another session")]
    Refused,
}

/// One session key, known in sealed values by the first bytes of its SHA-256.
pub struct SessionKey {
    id: [u8; KEY_ID_BYTES],
    key: LessSafeKey,
}

impl SessionKey {
    /// The key `text` spells: 32 bytes as 64 hex digits, or in base64 (standard or URL-safe
    /// alphabet, padded or not); surrounding whitespace is ignored.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = hex_bytes(text)
            .or_else(|| {
                [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                    .iter()
                    .find_map(|engine| engine.decode(text).ok())
            })
            .ok_or(KeyError::Encoding)?;
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != KEY_BYTES {
            return Err(KeyError::Encoding);
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| KeyError::Encoding)?;
        let mut id = [0; KEY_ID_BYTES];
        for (slot, byte) in id.iter_mut().zip(digest(&SHA256, bytes).as_ref()) {
            *slot = *byte;
        }
        Ok(Self { id, key: LessSafeKey::new(key) })
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey([redacted])")
    }
}

/// The keys sessions are sealed with: the first seals, every one opens, so a new key put first
/// keeps the sessions the others sealed readable until they end.
pub struct KeyRing {
    keys: Box<[SessionKey]>,
    random: SystemRandom,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing").field("keys", &self.keys.len()).finish()
    }
}

impl KeyRing {
    /// A ring of `keys`, the first sealing; `None` without a key.
    pub fn new(keys: Vec<SessionKey>) -> Option<Self> {
        (!keys.is_empty()).then(|| Self { keys: keys.into(), random: SystemRandom::new() })
    }

    /// `plaintext` sealed for `associated` with the first key and a fresh random nonce:
    /// the format byte, the key's id, the nonce, then the ciphertext and its tag.
    pub fn seal(&self, plaintext: &[u8], associated: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let key = self.keys.first().ok_or(EnvelopeError::UnknownKey)?;
        let mut nonce = [0; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| EnvelopeError::Random)?;
        let mut sealed = Vec::with_capacity(HEADER_BYTES + plaintext.len() + AES_256_GCM.tag_len());
        sealed.push(FORMAT);
        sealed.extend_from_slice(&key.id);
        sealed.extend_from_slice(&nonce);
        let mut in_out = plaintext.to_vec();
        key.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(associated), &mut in_out)
            .map_err(|_| EnvelopeError::Refused)?;
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// What `sealed` holds, when a key of the ring sealed it for `associated` and nothing
    /// changed since.
    pub fn open(&self, sealed: &[u8], associated: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let (header, ciphertext) = sealed.split_at_checked(HEADER_BYTES).ok_or(EnvelopeError::Malformed)?;
        let (format, rest) = header.split_first().ok_or(EnvelopeError::Malformed)?;
        let (id, nonce) = rest.split_at_checked(KEY_ID_BYTES).ok_or(EnvelopeError::Malformed)?;
        if *format != FORMAT {
            return Err(EnvelopeError::Malformed);
        }
        let key = self.keys.iter().find(|key| key.id == id).ok_or(EnvelopeError::UnknownKey)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| EnvelopeError::Malformed)?;
        let mut in_out = ciphertext.to_vec();
        let plaintext =
            key.key.open_in_place(nonce, Aad::from(associated), &mut in_out).map_err(|_| EnvelopeError::Refused)?;
        Ok(plaintext.to_vec())
    }
}

/// The bytes 64 hex digits spell.
fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if text.len() != 2 * KEY_BYTES || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const NEW: &str = "IBOhMNYXtIP4NtEZm-Svx3nAH4yXVVxjf3HCPpVCzV0";

    fn ring(keys: &[&str]) -> KeyRing {
        KeyRing::new(keys.iter().map(|key| SessionKey::from_text(key).unwrap()).collect()).unwrap()
    }

    #[test]
    fn a_sealed_session_opens_for_its_own_id_only() {
        let ring = ring(&[OLD]);
        let sealed = ring.seal(b"alice's session", b"id-1").unwrap();
        assert_eq!(ring.open(&sealed, b"id-1").unwrap(), b"alice's session");
        assert_eq!(ring.open(&sealed, b"id-2"), Err(EnvelopeError::Refused), "another session's value replayed");
        assert!(!sealed.windows(5).any(|window| window == b"alice"), "the plaintext does not show");
    }

    #[test]
    fn two_seals_of_the_same_session_differ_by_their_nonce() {
        let ring = ring(&[OLD]);
        assert_ne!(ring.seal(b"same", b"id").unwrap(), ring.seal(b"same", b"id").unwrap());
    }

    #[test]
    fn a_changed_byte_anywhere_refuses_the_value() {
        let ring = ring(&[OLD]);
        let sealed = ring.seal(b"alice's session", b"id").unwrap();
        for at in 0..sealed.len() {
            let mut tampered = sealed.clone();
            if let Some(byte) = tampered.get_mut(at) {
                *byte ^= 0x01;
            }
            assert!(ring.open(&tampered, b"id").is_err(), "byte {at} changed");
        }
        assert_eq!(ring.open(sealed.get(..HEADER_BYTES + 3).unwrap(), b"id"), Err(EnvelopeError::Refused));
        assert_eq!(ring.open(b"short", b"id"), Err(EnvelopeError::Malformed));
    }

    #[test]
    fn a_value_sealed_with_a_key_not_in_the_ring_does_not_open() {
        let sealed = ring(&[OLD]).seal(b"secret", b"id").unwrap();
        assert_eq!(ring(&[NEW]).open(&sealed, b"id"), Err(EnvelopeError::UnknownKey));
    }

    #[test]
    fn a_rotated_ring_seals_with_the_new_key_and_still_opens_the_old_keys_values() {
        let before = ring(&[OLD]).seal(b"opened before", b"id").unwrap();
        let rotated = ring(&[NEW, OLD]);
        assert_eq!(rotated.open(&before, b"id").unwrap(), b"opened before");
        let after = rotated.seal(b"opened after", b"id").unwrap();
        assert_eq!(ring(&[NEW]).open(&after, b"id").unwrap(), b"opened after", "the first key seals");
        assert_eq!(ring(&[OLD]).open(&after, b"id"), Err(EnvelopeError::UnknownKey));
    }

    #[test]
    fn keys_are_read_as_hex_or_base64_of_exactly_32_bytes_and_never_shown() {
        let standard = STANDARD.encode([7u8; 32]);
        for text in [OLD, NEW, &standard, &format!("  {standard}\n")] {
            assert!(SessionKey::from_text(text).is_ok(), "{text}");
        }
        let short = STANDARD.encode([7u8; 31]);
        for text in ["", "not a key", &OLD[..62], &short, &format!("{OLD}00")] {
            assert_eq!(SessionKey::from_text(text).err(), Some(KeyError::Encoding), "{text}");
        }
        let key = SessionKey::from_text(OLD).unwrap();
        assert_eq!(format!("{key:?}"), "SessionKey([redacted])");
        assert_eq!(format!("{:?}", ring(&[OLD, NEW])), "KeyRing { keys: 2 }");
    }
}
