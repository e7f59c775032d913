//! TOTP (RFC 6238) second factor and single-use recovery codes.
//!
//! HMAC-SHA1, 30-second steps, 6 digits — what every authenticator app speaks. A code is
//! accepted for the current step and one step either side (clock drift), compared in
//! constant time. Secrets are 20 random bytes, shown once as base32 in an `otpauth://` URI.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

pub const STEP_SECS: u64 = 30;
pub const DIGITS: u32 = 6;
/// Steps either side of now that are still accepted.
const SKEW_STEPS: u64 = 1;

/// HOTP (RFC 4226) for one counter value, truncated to `digits` decimal digits.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else { return 0 };
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = (u32::from(digest[offset]) & 0x7f) << 24
        | u32::from(digest[offset + 1]) << 16
        | u32::from(digest[offset + 2]) << 8
        | u32::from(digest[offset + 3]);
    binary % 10u32.pow(digits)
}

/// The TOTP code at `unix_secs`.
pub fn totp(secret: &[u8], unix_secs: u64, digits: u32) -> u32 {
    hotp(secret, unix_secs / STEP_SECS, digits)
}

/// Checks a 6-digit code at `unix_secs`, allowing one step of drift either way.
pub fn verify(secret: &[u8], code: &str, unix_secs: u64) -> bool {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let step = unix_secs / STEP_SECS;
    let mut ok = subtle::Choice::from(0);
    for candidate in step.saturating_sub(SKEW_STEPS)..=step + SKEW_STEPS {
        let expected = format!("{:06}", hotp(secret, candidate, DIGITS));
        ok |= expected.as_bytes().ct_eq(code.as_bytes());
    }
    ok.into()
}

/// A fresh 160-bit secret.
pub fn new_secret() -> Vec<u8> {
    use rand::RngCore;
    let mut secret = vec![0u8; 20];
    rand::rng().fill_bytes(&mut secret);
    secret
}

pub fn secret_base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// The URI authenticator apps scan.
pub fn otpauth_uri(secret: &[u8], account: &str) -> String {
    let account: String = account
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._@".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!(
        "otpauth://totp/Switchyard:{account}?secret={}&issuer=Switchyard&algorithm=SHA1&digits=6&period=30",
        secret_base32(secret)
    )
}

/// Ten recovery codes like `a1b2c-d3e4f`, each usable once instead of a TOTP code.
pub fn new_recovery_codes() -> Vec<String> {
    (0..10)
        .map(|_| {
            // 10 characters of [a-z0-9] (~51 bits), drawn until there are enough.
            let mut raw = String::with_capacity(10);
            while raw.len() < 10 {
                let more = super::random_token(16).to_lowercase();
                raw.extend(more.chars().filter(|c| c.is_ascii_alphanumeric()).take(10 - raw.len()));
            }
            format!("{}-{}", &raw[..5], &raw[5..])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 column (8 digits, the 20-byte ASCII seed).
    #[test]
    fn rfc6238_test_vectors() {
        let seed = b"12345678901234567890";
        let vectors = [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ];
        for (time, expected) in vectors {
            assert_eq!(totp(seed, time, 8), expected, "T = {time}");
        }
    }

    /// RFC 4226 appendix D.
    #[test]
    fn rfc4226_hotp_vectors() {
        let seed = b"12345678901234567890";
        let expected =
            [755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489];
        for (counter, code) in expected.into_iter().enumerate() {
            assert_eq!(hotp(seed, counter as u64, 6), code);
        }
    }

    #[test]
    fn verify_allows_one_step_of_drift_and_nothing_else() {
        let secret = new_secret();
        let now = 1_700_000_000;
        let code = |t: u64| format!("{:06}", totp(&secret, t, 6));
        assert!(verify(&secret, &code(now), now));
        assert!(verify(&secret, &code(now - 30), now));
        assert!(verify(&secret, &code(now + 30), now));
        assert!(!verify(&secret, &code(now - 90), now));
        assert!(!verify(&secret, "12345", now));
        assert!(!verify(&secret, "abcdef", now));
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        assert!(codes.iter().all(|c| c.len() == 11 && c.contains('-')), "{codes:?}");
        assert!(otpauth_uri(&secret, "a b@x.io").contains("a%20b@x.io"));
    }
}
