//! API keys: `sy_<id>_<secret>`, stored as a SHA-256 hash of the whole key.
//!
//! The id (public, 12 chars) finds the record; the secret (32 random chars, ~190 bits) is
//! checked by comparing hashes in constant time. A fast hash is right here — unlike
//! passwords, the secret is random and long, so there is nothing to brute-force — and it
//! keeps every authenticated call cheap. The key is shown once, at creation.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "sy_";

/// A freshly generated key: the full secret (for the client, once) and what is stored.
pub struct GeneratedKey {
    pub id: String,
    pub key: String,
    pub hash: Vec<u8>,
}

pub fn generate() -> GeneratedKey {
    let id = super::random_token(12).to_lowercase().replace(['-', '_'], "x");
    let secret = super::random_token(32).replace(['-', '_'], "x");
    let key = format!("{PREFIX}{id}_{secret}");
    let hash = hash(&key);
    GeneratedKey { id, key, hash }
}

pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// The id part of a presented key, if it looks like one of ours.
pub fn parse_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 12 && !secret.is_empty()).then_some(id)
}

pub fn matches(key: &str, stored_hash: &[u8]) -> bool {
    hash(key).ct_eq(stored_hash).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match_only_themselves() {
        let a = generate();
        let b = generate();
        assert!(a.key.starts_with("sy_"));
        assert_eq!(parse_id(&a.key), Some(a.id.as_str()));
        assert!(matches(&a.key, &a.hash));
        assert!(!matches(&b.key, &a.hash));
        assert_eq!(parse_id("sk-openai"), None);
        assert_eq!(parse_id("sy_short_x"), None);
    }
}
