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
