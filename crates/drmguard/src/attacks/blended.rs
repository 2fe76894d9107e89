//! Blended (Chen et al. 2017): a full-image pattern mixed into every pixel,
//! x' = (1 − α) x + α p, with α = 0.2 by default (BackdoorBench's `blended` setting). The pattern
//! is a fixed pseudo-random RGB image drawn from the attack's seed.

use burn::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::Attack;
use super::stamp::Stamp;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct BlendedConfig {
    /// Blended: mixing weight α of the pattern.
    #[arg(long = "blended-alpha", default_value_t = 0.2)]
    pub alpha: f32,
}

impl Default for BlendedConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl BlendedConfig {
    pub fn build(&self, size: u32, seed: u64) -> Result<Blended> {
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(Error::invalid("Blended alpha", format!("{} (must be in (0, 1])", self.alpha)));
        }
        let s = size as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xb1e4_d000_0000_0001);
        let pattern = (0..3 * s * s).map(|_| rng.random::<f32>()).collect();
        Ok(Blended { stamp: Stamp { size: s, mask: vec![self.alpha; s * s], pattern } })
    }
}

#[derive(Debug, Clone)]
pub struct Blended {
    pub stamp: Stamp,
}

impl Attack for Blended {
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        self.stamp.apply(x)
    }
}
