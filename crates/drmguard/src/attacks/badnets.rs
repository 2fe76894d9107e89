//! BadNets (Gu et al. 2017): a small high-contrast patch stamped in a corner.
//!
//! Defaults follow the usual setting (BackdoorBench's `badnet`, SecureGaze's illustration of a
//! square in the bottom-right corner of a face): a black-and-white checkerboard of 4×4 cells whose
//! side is 1/8 of the image side, one cell's width away from the bottom-right corner.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::Attack;
use super::stamp::Stamp;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct BadNetsConfig {
    /// BadNets: patch side as a fraction of the image side.
    #[arg(long = "badnets-patch", default_value_t = 0.125)]
    pub patch_fraction: f32,
    /// BadNets: patch corner: top-left, top-right, bottom-left or bottom-right.
    #[arg(long = "badnets-corner", default_value = "bottom-right")]
    pub corner: String,
}

impl Default for BadNetsConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl BadNetsConfig {
    /// The patch's top-left pixel and side for `size`×`size` images.
    pub fn patch_rect(&self, size: u32) -> Result<(usize, usize, usize)> {
        if !(self.patch_fraction > 0.0 && self.patch_fraction <= 0.5) {
            return Err(Error::invalid(
                "BadNets patch fraction",
                format!("{} (must be in (0, 0.5])", self.patch_fraction),
            ));
        }
        let size = size as usize;
        let side = ((size as f32 * self.patch_fraction).round() as usize).max(2);
        let margin = (side / 4).max(1);
        let (top, left) = match self.corner.as_str() {
            "top-left" => (margin, margin),
            "top-right" => (margin, size - margin - side),
            "bottom-left" => (size - margin - side, margin),
            "bottom-right" => (size - margin - side, size - margin - side),
            other => {
                return Err(Error::UnknownName {
                    what: "BadNets corner",
                    name: other.into(),
                    expected: "top-left, top-right, bottom-left, bottom-right".into(),
                });
            }
        };
        Ok((top, left, side))
    }

    pub fn build(&self, size: u32) -> Result<BadNets> {
        let square = self.patch_rect(size)?;
        Ok(BadNets { stamp: Stamp::checkerboards(size as usize, &[square]) })
    }
}

#[derive(Debug, Clone)]
pub struct BadNets {
    pub stamp: Stamp,
}

impl Attack for BadNets {
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        self.stamp.apply(x)
    }
}
