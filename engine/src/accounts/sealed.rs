//! Secrets at rest: signing keys' private halves and TOTP secrets, sealed with
//! ChaCha20-Poly1305 (ring) under a key derived from `auth.secrets_key`
//! (`SWITCHYARD_SECRETS_KEY`) before they are written to PostgreSQL.
//!
//! Stored form: a 12-byte random nonce followed by the ciphertext and its 16-byte tag. The
//! associated data names what the bytes are and whose (`signing_key:7`, `mfa:<user id>`), so
//! a sealed value copied into another row does not open there. The key is HKDF-SHA256 of
//! the configured secret; the secret must be at least [`MIN_SECRET_LEN`] characters (e.g.
//! `openssl rand -base64 32`), since HKDF does not make a short passphrase strong.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// Shortest accepted `auth.secrets_key`.
pub const MIN_SECRET_LEN: usize = 32;

const SALT: &[u8] = b"switchyard accounts sealing";
const INFO: &[u8] = b"chacha20-poly1305 v1";

/// The sealing key. Its `Debug` prints nothing of the key.
pub struct SealingKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(…)")
    }
}

/// A sealed value that does not open: another key, or tampered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a sealed secret does not open with this auth.secrets_key")]
pub struct OpenError;

impl SealingKey {
    /// Derives the key from the configured secret.
    pub fn from_secret(secret: &str) -> anyhow::Result<SealingKey> {
        if secret.chars().count() < MIN_SECRET_LEN {
            anyhow::bail!(
                "auth.secrets_key / SWITCHYARD_SECRETS_KEY must be at least {MIN_SECRET_LEN} characters (e.g. `openssl rand -base64 32`)"
            );
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret.as_bytes());
        let okm = prk
            .expand(&[INFO], &CHACHA20_POLY1305)
            .map_err(|_| anyhow::anyhow!("failed to derive the sealing key"))?;
        Ok(SealingKey { key: LessSafeKey::new(UnboundKey::from(okm)), rng: SystemRandom::new() })
    }

    /// Encrypts `plaintext`, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| anyhow::anyhow!("the system RNG failed"))?;
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut body,
            )
            .map_err(|_| anyhow::anyhow!("failed to seal a secret"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + body.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts what [`Self::seal`] produced for the same `context`.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .map_err(|_| OpenError)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let key = SealingKey::from_secret(SECRET).unwrap();
        let sealed = key.seal(b"private key bytes", "signing_key:1").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"private"), "the plaintext is not visible");
        assert_eq!(key.open(&sealed, "signing_key:1").unwrap(), b"private key bytes");
        // Another row, another key, a flipped bit: none opens.
        assert_eq!(key.open(&sealed, "signing_key:2"), Err(OpenError));
        let other = SealingKey::from_secret(&format!("{SECRET}-other")).unwrap();
        assert_eq!(other.open(&sealed, "signing_key:1"), Err(OpenError));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(key.open(&tampered, "signing_key:1"), Err(OpenError));
        assert_eq!(key.open(&sealed[..10], "signing_key:1"), Err(OpenError));
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(sealed, key.seal(b"private key bytes", "signing_key:1").unwrap());
    }

    #[test]
    fn short_secrets_are_refused() {
        let error = SealingKey::from_secret("too short").unwrap_err().to_string();
        assert!(error.contains("SWITCHYARD_SECRETS_KEY"), "{error}");
    }
}
