//! Argon2id (from the `argon2` crate) behind a parameter policy.
//!
//! Stored parameters are read back from disk at unseal time; the policy
//! refuses parameters below the floor (a downgraded file) and above the
//! ceiling (a file that would make unseal exhaust memory or time).

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::{CryptoError, Key256};

/// Argon2id cost parameters: memory in KiB, passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Params {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Argon2Params {
    /// RFC 9106 §4, second recommended option: 64 MiB, 3 passes, 4 lanes.
    pub const RFC9106_SECOND: Self = Self {
        m_kib: 64 * 1024,
        t: 3,
        p: 4,
    };
}

/// The range of Argon2id parameters Strongroom accepts.
#[derive(Debug, Clone, Copy)]
pub struct KdfPolicy {
    min: Argon2Params,
    max: Argon2Params,
}

impl KdfPolicy {
    /// Production policy: at least RFC 9106's second recommendation, at most
    /// 4 GiB, 16 passes and 16 lanes.
    pub const fn standard() -> Self {
        Self {
            min: Argon2Params::RFC9106_SECOND,
            max: Argon2Params {
                m_kib: 4 * 1024 * 1024,
                t: 16,
                p: 16,
            },
        }
    }

    /// A policy that accepts tiny costs. Only for tests and benchmarks that
    /// must not spend 64 MiB per derivation; never for stored secrets.
    pub const fn danger_insecure_for_tests() -> Self {
        Self {
            min: Argon2Params {
                m_kib: 8,
                t: 1,
                p: 1,
            },
            max: Argon2Params {
                m_kib: 4 * 1024 * 1024,
                t: 16,
                p: 16,
            },
        }
    }

    /// The cheapest parameters the policy accepts; what `init` writes.
    pub fn floor(&self) -> Argon2Params {
        self.min
    }

    /// Accepts `params` only within the policy's floor and ceiling.
    pub fn check(&self, params: &Argon2Params) -> Result<(), CryptoError> {
        if params.m_kib > self.max.m_kib || params.t > self.max.t || params.p > self.max.p {
            return Err(CryptoError::KdfParams("above the policy's maximum"));
        }
        if params.m_kib < self.min.m_kib || params.t < self.min.t || params.p < self.min.p {
            return Err(CryptoError::KdfParams("below the policy's minimum"));
        }
        if params.m_kib < 8 * params.p {
            return Err(CryptoError::KdfParams("memory below 8 KiB per lane"));
        }
        Ok(())
    }
}

/// Derives a 256-bit key from a passphrase with Argon2id (version 0x13).
pub fn derive_key_from_passphrase(
    policy: &KdfPolicy,
    params: &Argon2Params,
    passphrase: &[u8],
    salt: &[u8],
) -> Result<Key256, CryptoError> {
    policy.check(params)?;
    if salt.len() < 16 {
        return Err(CryptoError::KdfParams("salt shorter than 16 bytes"));
    }
    let argon_params = Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|_| CryptoError::KdfParams("rejected by argon2"))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase, salt, &mut out)
        .map_err(|_| CryptoError::KdfParams("rejected by argon2"))?;
    let key = Key256::from_bytes(out);
    out.zeroize();
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_out_of_range_parameters() {
        let policy = KdfPolicy::standard();
        assert!(policy.check(&Argon2Params::RFC9106_SECOND).is_ok());
        let weak = Argon2Params {
            m_kib: 1024,
            t: 3,
            p: 4,
        };
        assert!(policy.check(&weak).is_err());
        let huge = Argon2Params {
            m_kib: u32::MAX,
            t: 3,
            p: 4,
        };
        assert!(policy.check(&huge).is_err());
        let many_passes = Argon2Params {
            t: 1000,
            ..Argon2Params::RFC9106_SECOND
        };
        assert!(policy.check(&many_passes).is_err());
    }

    #[test]
    fn short_salt_is_refused() {
        let policy = KdfPolicy::danger_insecure_for_tests();
        let params = Argon2Params {
            m_kib: 8,
            t: 1,
            p: 1,
        };
        assert!(derive_key_from_passphrase(&policy, &params, b"pw", &[0; 8]).is_err());
        assert!(derive_key_from_passphrase(&policy, &params, b"pw", &[0; 16]).is_ok());
    }
}

/// The secret ("pepper") mixed into every staff password hash: Argon2id's
/// `secret` input, derived from the root key and never stored. A stolen
/// data directory then holds hashes no one can test guesses against
/// offline; the PHC string does not record the pepper, so a hash made
/// without it (or with another) simply never verifies.
pub struct PasswordPepper(Key256);

impl PasswordPepper {
    pub fn new(key: Key256) -> Self {
        Self(key)
    }

    /// A pepper no stored hash uses: for the dummy hash that unknown
    /// usernames are checked against (the same cost, never a match).
    pub fn random() -> Result<Self, CryptoError> {
        Ok(Self(Key256::random()?))
    }

    fn argon2(&self, params: Params) -> Result<Argon2<'_>, CryptoError> {
        Argon2::new_with_secret(
            self.0.expose_secret(),
            Algorithm::Argon2id,
            Version::V0x13,
            params,
        )
        .map_err(|_| CryptoError::KdfParams("rejected by argon2"))
    }
}

impl std::fmt::Debug for PasswordPepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordPepper(<redacted>)")
    }
}

/// How staff passwords are hashed: Argon2id PHC strings, peppered with a
/// [`PasswordPepper`], with a length policy. Stored hashes whose costs are
/// above the ceiling are refused rather than computed.
#[derive(Debug, Clone, Copy)]
pub struct PasswordPolicy {
    params: Argon2Params,
    min_chars: usize,
    max_bytes: usize,
}

/// Ceiling for parameters read back from a stored hash.
const PASSWORD_CEILING: Argon2Params = Argon2Params {
    m_kib: 1024 * 1024,
    t: 16,
    p: 16,
};

impl PasswordPolicy {
    /// OWASP's Argon2id minimum (m = 19 MiB, t = 2, p = 1) and passwords of
    /// at least 12 characters (NIST SP 800-63B allows 8; 12 is PCI DSS
    /// 8.3.6's).
    pub const fn owasp() -> Self {
        Self {
            params: Argon2Params {
                m_kib: 19 * 1024,
                t: 2,
                p: 1,
            },
            min_chars: 12,
            max_bytes: 1024,
        }
    }

    /// Tiny costs for tests; never for real passwords.
    pub const fn danger_insecure_for_tests() -> Self {
        Self {
            params: Argon2Params {
                m_kib: 8,
                t: 1,
                p: 1,
            },
            min_chars: 12,
            max_bytes: 1024,
        }
    }

    /// Whether `password` meets the length rules (the message never
    /// contains the password).
    pub fn check_strength(&self, password: &str) -> Result<(), &'static str> {
        if password.chars().count() < self.min_chars {
            return Err("must be at least 12 characters");
        }
        if password.len() > self.max_bytes {
            return Err("must be at most 1024 bytes");
        }
        Ok(())
    }

    /// The PHC string of `password` under a fresh random salt and `pepper`.
    pub fn hash(&self, pepper: &PasswordPepper, password: &str) -> Result<String, CryptoError> {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt_bytes = super::random_array::<16>()?;
        let salt = SaltString::encode_b64(&salt_bytes).map_err(|_| CryptoError::Length("salt"))?;
        let params = Params::new(self.params.m_kib, self.params.t, self.params.p, None)
            .map_err(|_| CryptoError::KdfParams("rejected by argon2"))?;
        pepper
            .argon2(params)?
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|_| CryptoError::KdfParams("rejected by argon2"))
    }

    /// Checks `password` against a stored PHC string made with `pepper`, in
    /// constant time. False for a wrong password, another pepper (or none),
    /// a malformed hash, another algorithm, or costs above the ceiling.
    /// Over-long passwords are refused unhashed.
    pub fn verify(&self, pepper: &PasswordPepper, phc: &str, password: &str) -> bool {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        if password.len() > self.max_bytes {
            return false;
        }
        let Ok(hash) = PasswordHash::new(phc) else {
            return false;
        };
        if hash.algorithm.as_str() != "argon2id" {
            return false;
        }
        let Ok(params) = Params::try_from(&hash) else {
            return false;
        };
        if params.m_cost() > PASSWORD_CEILING.m_kib
            || params.t_cost() > PASSWORD_CEILING.t
            || params.p_cost() > PASSWORD_CEILING.p
        {
            return false;
        }
        // The PHC string's own parameters are used; the pepper is ours.
        pepper
            .argon2(Params::default())
            .is_ok_and(|argon| argon.verify_password(password.as_bytes(), &hash).is_ok())
    }
}

#[cfg(test)]
mod password_tests {
    use super::*;

    fn pepper(byte: u8) -> PasswordPepper {
        PasswordPepper::new(Key256::from_bytes([byte; 32]))
    }

    #[test]
    fn hash_and_verify() {
        let policy = PasswordPolicy::danger_insecure_for_tests();
        let pepper = pepper(1);
        let phc = policy.hash(&pepper, "a long enough password").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
        assert!(!phc.contains("a long enough password"));
        assert!(policy.verify(&pepper, &phc, "a long enough password"));
        assert!(!policy.verify(&pepper, &phc, "a long enough passwore"));
        assert!(!policy.verify(&pepper, "not a hash", "x"));
        assert_ne!(phc, policy.hash(&pepper, "a long enough password").unwrap());
    }

    #[test]
    fn a_hash_verifies_only_with_its_pepper() {
        use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
        let policy = PasswordPolicy::danger_insecure_for_tests();
        let phc = policy.hash(&pepper(1), "a long enough password").unwrap();
        // The wrong pepper: refused, though the password is right.
        assert!(!policy.verify(&pepper(2), &phc, "a long enough password"));
        // No pepper (what a thief of the data directory has): no match.
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"a long enough password", &parsed)
                .is_err()
        );
        // A hash stored without the pepper is refused.
        let params = Params::new(8, 1, 1, None).unwrap();
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let unpeppered = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"a long enough password", &salt)
            .unwrap()
            .to_string();
        assert!(!policy.verify(&pepper(1), &unpeppered, "a long enough password"));
        assert_eq!(format!("{:?}", pepper(0xAB)), "PasswordPepper(<redacted>)");
    }

    #[test]
    fn refuses_weak_passwords_and_expensive_hashes() {
        let policy = PasswordPolicy::owasp();
        assert!(policy.check_strength("short").is_err());
        assert!(policy.check_strength("twelve chars").is_ok());
        assert!(policy.check_strength(&"x".repeat(2000)).is_err());
        // An argon2id hash claiming 4 GiB is refused, not computed.
        let huge = "$argon2id$v=19$m=4194304,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(!policy.verify(&pepper(1), huge, "password"));
        let argon2i =
            "$argon2i$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA";
        assert!(!policy.verify(&pepper(1), argon2i, "password"));
    }
}
