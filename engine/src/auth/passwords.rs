//! Password hashing: argon2id with the crate's default (OWASP-recommended) parameters, in
//! PHC string form so parameters can be raised later without breaking stored hashes.
//!
//! Login always does one argon2 verification, even for an unknown email (against
//! [`dummy_hash`]), so response time does not reveal whether an account exists.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Shortest password accepted for a new user.
pub const MIN_PASSWORD_CHARS: usize = 12;

pub fn hash(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("failed to hash a password: {e}"))
}

/// Whether `password` matches the PHC string `hash` (argon2 compares in constant time).
pub fn verify(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// [`hash`] on the blocking pool: argon2 is deliberately slow (tens of ms, far more in a
/// debug build) and must not stall the HTTP worker's event loop.
pub async fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash(&password))
        .await
        .map_err(|e| anyhow::anyhow!("password hashing panicked: {e}"))?
}

/// [`verify`] on the blocking pool.
pub async fn verify_blocking(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_owned(), hash.to_owned());
    tokio::task::spawn_blocking(move || verify(&password, &hash)).await.unwrap_or(false)
}

/// A real hash of a random password, verified against when the account does not exist.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash(&super::random_token(24)).unwrap_or_default())
}

/// Refuses passwords that are too short to be worth hashing.
pub fn validate_new(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!("passwords need at least {MIN_PASSWORD_CHARS} characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_per_salt() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(verify("correct horse battery", &a));
        assert!(!verify("correct horse battery!", &a));
        assert!(!verify("x", "not a hash"));
        assert!(!verify("anything", dummy_hash()));
    }
}
