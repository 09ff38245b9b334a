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

/// ring's system RNG behind the `rand_core` traits that other crates (the
/// Shamir dealer) take. Those traits cannot fail, so a failure is recorded
/// instead: the caller must check [`SystemRng::healthy`] afterwards and
/// discard anything made while it was false.
#[derive(Debug, Default)]
pub struct SystemRng {
    failed: bool,
}

impl SystemRng {
    pub fn new() -> Self {
        Self::default()
    }

    /// False once any request could not be served by the OS.
    pub fn healthy(&self) -> bool {
        !self.failed
    }
}

impl rand_core::TryRng for SystemRng {
    type Error = rand_core::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        if fill_random(dst).is_err() {
            self.failed = true;
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SystemRng {}
