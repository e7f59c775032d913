//! Password hashing: argon2id with the crate's default (OWASP-recommended) parameters, in
//! PHC string form so parameters can be raised later without breaking stored hashes.
//!
//! Login always does one argon2 verification, even for an unknown email (against
//! [`dummy_hash`]), so response time does not reveal whether an account exists.
//!
//! Each hash needs 19 MiB of working memory. Left to the allocator, a burst of logins left
//! one such block resident in each glibc malloc arena that ran one (8 per core): +380 MiB
//! on a 2-core node after 64 logins. The blocks are therefore kept in a small pool and reused,
//! so what stays resident is one block per hash that ran at once.
//!
//! At most 2 × cores hashes run at once ([`Argon2Gate`]). The permit travels with the work
//! onto the blocking pool: a client that resets its connection mid-login drops its request,
//! not the argon2 run it started, so resets cannot start runs beyond the gate.

use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};

use tokio::sync::Semaphore;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Shortest password accepted for a new user.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Working memory kept for reuse, beyond which a finished hash frees its block.
const POOLED_BLOCKS: usize = 32;

static MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// Runs argon2 on pooled working memory.
fn argon2_into(argon: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> bool {
    let blocks = argon.params().block_count();
    let pooled = MEMORY.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let mut memory =
        pooled.filter(|m| m.len() == blocks).unwrap_or_else(|| vec![Block::default(); blocks]);
    let ok = argon.hash_password_into_with_memory(password, salt, out, &mut memory).is_ok();
    let mut pool = MEMORY.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < POOLED_BLOCKS {
        pool.push(memory);
    }
    ok
}

pub fn hash(password: &str) -> anyhow::Result<String> {
    let failed = |e: &dyn std::fmt::Display| anyhow::anyhow!("failed to hash a password: {e}");
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_bytes).map_err(|e| failed(&e))?;
    let argon = Argon2::default();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    if !argon2_into(&argon, password.as_bytes(), salt_bytes, &mut out) {
        return Err(failed(&"argon2 refused its input"));
    }
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params()).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `hash`, with the parameters stored in it (the
/// comparison of `Output`s is constant-time).
pub fn verify(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else { return false };
    let version = parsed.version.map_or(Ok(Version::default()), Version::try_from);
    let (Ok(version), Ok(params)) = (version, Params::try_from(&parsed)) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else { return false };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    argon2_into(&argon, password.as_bytes(), salt_bytes, &mut out)
        && Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// Bounds how many argon2 runs work at once, however their callers fare.
#[derive(Clone)]
pub struct Argon2Gate(Arc<Semaphore>);

impl Argon2Gate {
    pub fn new(permits: usize) -> Self {
        Self(Arc::new(Semaphore::new(permits.max(1))))
    }

    /// Runs `work` on the blocking pool once a permit is free; the permit is released when
    /// `work` returns, even if this future was dropped meanwhile. `None`: `work` panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let permit = self.0.clone().acquire_owned().await.ok()?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .ok()
    }

    /// Permits not in use.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// The node's gate: 2 × cores, at most [`POOLED_BLOCKS`] (so every run finds pooled memory).
static GATE: LazyLock<Argon2Gate> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Argon2Gate::new((2 * cores).clamp(2, POOLED_BLOCKS))
});

/// [`hash`] on the blocking pool: argon2 is deliberately slow (tens of ms, far more in a
/// debug build) and must not stall the HTTP worker's event loop.
pub async fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let password = password.to_owned();
    GATE.run(move || hash(&password))
        .await
        .ok_or_else(|| anyhow::anyhow!("password hashing panicked"))?
}

/// [`verify`] on the blocking pool.
pub async fn verify_blocking(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_owned(), hash.to_owned());
    GATE.run(move || verify(&password, &hash)).await.unwrap_or(false)
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

    #[tokio::test]
    async fn a_dropped_caller_keeps_its_permit_until_the_hash_is_done() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::Duration;

        let gate = Argon2Gate::new(1);
        let finished = Arc::new(AtomicBool::new(false));
        let first = {
            let (gate, finished) = (gate.clone(), finished.clone());
            tokio::spawn(async move {
                gate.run(move || {
                    std::thread::sleep(Duration::from_millis(300));
                    finished.store(true, Ordering::SeqCst);
                })
                .await
            })
        };
        while gate.available() > 0 {
            tokio::task::yield_now().await;
        }
        // The client went away mid-hash: its request is dropped, its argon2 run is not.
        first.abort();
        assert_eq!(gate.available(), 0, "the run still holds the permit");
        let after = gate.run(move || finished.load(Ordering::SeqCst)).await;
        assert_eq!(after, Some(true), "the next run waited for the first to finish");
        assert_eq!(gate.available(), 1);
    }

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

    #[test]
    fn hashes_match_the_argon2_crates_own_phc_hashing() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let ours = hash("correct horse battery").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"correct horse battery", &parsed).is_ok());
        // And a hash made by the crate, with other parameters, verifies here.
        let params = Params::new(8 * 1024, 3, 1, Some(32)).unwrap();
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"another password", &salt)
            .unwrap()
            .to_string();
        assert!(verify("another password", &theirs));
        assert!(!verify("another passwore", &theirs));
    }
}
