//! The system random number generator (ring's `SystemRandom`).

use ring::rand::{SecureRandom, SystemRandom};

use super::CryptoError;

/// Fills `out` from the operating system's CSPRNG.
pub fn fill_random(out: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new().fill(out).map_err(|_| CryptoError::Rng)
}

/// A fixed-size array of random bytes.
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}
