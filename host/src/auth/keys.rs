//! API key material: generation, the shape a key has on the wire, and the
//! hash it is stored as.
//!
//! A key is `glia_` followed by 48 hex digits (192 random bits from the
//! operating system). Only its SHA-256 is stored: keys are high-entropy
//! random strings, so a fast hash is as safe as a slow one against
//! guessing, and it keeps authentication to a hash and a map lookup on
//! every request. The first characters are kept as a `prefix` so that a
//! user can tell keys apart in listings.

use sha2::{Digest, Sha256};

/// What every key starts with.
pub const KEY_PREFIX: &str = "glia_";
/// Random bytes in a key.
const KEY_RANDOM_BYTES: usize = 24;
/// Characters of a key shown in listings.
const SHOWN_CHARS: usize = 12;

/// Fills a buffer from the operating system's random source.
fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| format!("the system random source failed: {e}"))?;
    Ok(bytes)
}

/// A new random key.
pub fn generate() -> Result<String, String> {
    Ok(format!(
        "{KEY_PREFIX}{}",
        hex::encode(random::<KEY_RANDOM_BYTES>()?)
    ))
}

/// A new random identifier, `{kind}_` and 16 hex digits.
pub fn new_id(kind: &str) -> Result<String, String> {
    Ok(format!("{kind}_{}", hex::encode(random::<8>()?)))
}

/// The stored form of a key.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The part of a key shown in listings.
pub fn shown_prefix(key: &str) -> String {
    key.chars().take(SHOWN_CHARS).collect()
}

/// Whether `key` has the shape of a glia key (`GLIA_ADMIN_KEY` may be any
/// string of at least 32 characters, for operators who bring their own).
pub fn acceptable_admin_key(key: &str) -> bool {
    key.len() >= 32 && key.len() <= 256 && key.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_hash_stably() {
        let a = generate().expect("key");
        let b = generate().expect("key");
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 2 * KEY_RANDOM_BYTES);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a).len(), 64);
        assert_eq!(shown_prefix(&a).len(), SHOWN_CHARS);
        assert!(acceptable_admin_key(&a));
        assert!(!acceptable_admin_key("short"));
        assert!(new_id("key").expect("id").starts_with("key_"));
    }
}
