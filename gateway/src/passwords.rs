//! Password hashes: argon2id PHC strings with a fresh salt, and their check. One place for
//! dashboard users (`gateway user`, the admin page, the sign-in forms) and for `basic`
//! access on public URLs. Both take tens of milliseconds of CPU: callers run them off the
//! async workers (`spawn_blocking`).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// The argon2id PHC string of `password`, with a fresh salt.
pub(crate) fn hash_password(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` is the one `phc` was made from (a malformed `phc` matches nothing).
pub(crate) fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert_ne!(
            h,
            hash_password("correct horse").unwrap(),
            "fresh salt each time"
        );
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct Horse", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }
}
