//! Reversed triggers: what every trigger a defense reverse-engineers can do ([`ReversedTrigger`]),
//! and the mask-and-pattern one, x' = (1 − m) ⊙ x + m ⊙ p, with m (one channel) and p (RGB) kept
//! in [0, 1] by NC's `tanh(·) / (2 − ε) + 0.5` parameterisation; and a free target vector. The
//! mask and pattern are shared by the defenses that reverse-engineer patch triggers (Neural
//! Cleanse, ABS, the input-agnostic reversal).

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Int, Tensor};

use super::unlearn::NC_UNLEARN_RATIO;
use super::values;
use crate::error::Result;

/// A reversed trigger: the edit a detector found that turns clean images into trigger-carrying
/// ones (DRMGuard's generator, a mask and pattern). A scan's [`super::Finding`] carries it, so that
/// a repair unlearns what the scan found instead of searching again.
pub trait ReversedTrigger: std::fmt::Debug {
    /// The edited images, for clean images `[n, 3, S, S]` on the defense's (non-autodiff) device.
    fn apply(&self, x: Tensor<4>) -> Tensor<4>;

    /// The share of the clean set that unlearning adds again, edited, unless the user chose one:
    /// the recipe of the defense that reverses this kind of trigger.
    fn unlearn_ratio(&self) -> f64;
}

impl ReversedTrigger for MaskTrigger {
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        self.stamp(x)
    }

    fn unlearn_ratio(&self) -> f64 {
        NC_UNLEARN_RATIO
    }
}

/// Several reversed triggers sharing one unlearning run: image i of a batch gets trigger
/// i mod k. Each keeps its own share of the clean set, so the shares add up (to at most all of
/// it). Each trigger sees only its own images, so that an `Alternating` inside another one
/// still spreads its images over all of its triggers.
#[derive(Debug)]
pub struct Alternating(pub Vec<std::sync::Arc<dyn ReversedTrigger>>);

impl ReversedTrigger for Alternating {
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let k = self.0.len();
        let n = x.dims()[0];
        if k <= 1 || n == 0 {
            return self.0.first().map_or(x.clone(), |t| t.apply(x));
        }
        let device = x.device();
        let mut order: Vec<i32> = Vec::with_capacity(n);
        let mut parts = Vec::with_capacity(k);
        for (i, trigger) in self.0.iter().enumerate() {
            let rows: Vec<i32> = (i..n).step_by(k).map(|r| r as i32).collect();
            if rows.is_empty() {
                continue;
            }
            parts.push(trigger.apply(x.clone().select(0, Tensor::<1, Int>::from_ints(rows.as_slice(), &device))));
            order.extend(rows);
        }
        // Back to the batch's order: row r of the output is the part row that came from r.
        let mut inverse = vec![0i32; n];
        for (j, &r) in order.iter().enumerate() {
            inverse[r as usize] = j as i32;
        }
        Tensor::cat(parts, 0).select(0, Tensor::<1, Int>::from_ints(inverse.as_slice(), &device))
    }

    fn unlearn_ratio(&self) -> f64 {
        self.0.iter().map(|t| t.unlearn_ratio()).sum::<f64>().min(1.0)
    }
}

/// ε of NC's parameterisation: keeps tanh's argument finite at the ends of [0, 1].
const EPSILON: f32 = 1e-7;

/// NC's map from the optimised values to [0, 1].
pub(crate) fn squash<const D: usize>(raw: Tensor<D>) -> Tensor<D> {
    raw.tanh() / (2.0 - EPSILON) + 0.5
}

/// The inverse of [`squash`] on values in (0, 1): atanh((u − 0.5) · (2 − ε)).
pub(crate) fn inverse_squash<const D: usize>(u: Tensor<D>) -> Tensor<D> {
    let v = (u - 0.5) * (2.0 - EPSILON);
    ((v.clone() + 1.0) / (v.neg() + 1.0)).log() * 0.5
}

#[derive(Module, Debug)]
pub struct MaskTrigger {
    /// `[1, 1, S / c, S / c]`, before squashing: one value per c × c cell of the image (c = 1:
    /// per pixel, as in NC).
    pub mask_raw: Param<Tensor<4>>,
    /// `[1, 3, S, S]`, before squashing.
    pub pattern_raw: Param<Tensor<4>>,
}

impl MaskTrigger {
    /// A random mask and pattern, uniform in [0, 1] after squashing as in NC, drawn from the
    /// device's generator (seed it first, e.g. with [`crate::models::init_seeded`]).
    /// The mask has one value per `cell` × `cell` block of pixels (`cell` divides `side`).
    pub fn random(side: usize, cell: usize, device: &Device) -> Self {
        let raw = |channels: usize, side: usize| {
            let u = Tensor::<4>::random([1, channels, side, side], Distribution::Uniform(0.0, 1.0), device);
            Param::from_tensor(inverse_squash(u))
        };
        MaskTrigger { mask_raw: raw(1, side / cell.max(1)), pattern_raw: raw(3, side) }
    }

    /// A mask of `cells` × `cells` values and an RGB pattern of `side` × `side` pixels, both
    /// given after squashing (row-major, in (0, 1)).
    pub fn from_values(mask: &[f32], cells: usize, pattern: &[f32], side: usize, device: &Device) -> Self {
        let raw = |v: &[f32], channels: usize, side: usize| {
            let inside: Vec<f32> = v.iter().map(|x| x.clamp(1e-4, 1.0 - 1e-4)).collect();
            Param::from_tensor(inverse_squash(Tensor::<1>::from_floats(inside.as_slice(), device).reshape([1, channels, side, side])))
        };
        MaskTrigger { mask_raw: raw(mask, 1, cells), pattern_raw: raw(pattern, 3, side) }
    }

    /// Side in pixels of the mask's cells (1: per pixel).
    pub fn cell(&self) -> usize {
        self.pattern_raw.val().dims()[2] / self.mask_raw.val().dims()[2]
    }

    /// m in [0, 1] per cell, `[1, 1, S / c, S / c]`.
    pub fn cell_mask(&self) -> Tensor<4> {
        squash(self.mask_raw.val())
    }

    /// m in [0, 1], `[1, 1, S, S]`: each cell's value repeated over its pixels.
    pub fn mask(&self) -> Tensor<4> {
        let m = self.cell_mask();
        let [_, _, r, _] = m.dims();
        let side = self.pattern_raw.val().dims()[2];
        let cell = side / r;
        if cell == 1 {
            return m;
        }
        m.reshape([1, 1, r, 1, r, 1]).expand([1, 1, r, cell, r, cell]).reshape([1, 1, side, side])
    }

    /// p in [0, 1], `[1, 3, S, S]`.
    pub fn pattern(&self) -> Tensor<4> {
        squash(self.pattern_raw.val())
    }

    /// Stamps the trigger on images `[n, 3, S, S]`.
    pub fn stamp(&self, x: Tensor<4>) -> Tensor<4> {
        let m = self.mask();
        x * (m.clone().neg() + 1.0) + m * self.pattern()
    }

    /// Mean of m over the pixels: the share of the image the trigger covers (NC's L1 norm
    /// divided by the image area).
    pub fn mask_share(&self) -> Tensor<1> {
        self.mask().mean()
    }

    /// The mask's total variation over the image area: the mean absolute difference between
    /// neighbouring mask values, across and down, summed. About 4 × the share for isolated
    /// pixels, 4 / k × the share for one k × k square: small for a patch or a uniform blend,
    /// large for scattered pixels.
    pub fn mask_variation(&self) -> Tensor<1> {
        let m = self.mask();
        let [_, _, h, w] = m.dims();
        let across = (m.clone().slice([0..1, 0..1, 0..h, 1..w]) - m.clone().slice([0..1, 0..1, 0..h, 0..w - 1])).abs().sum();
        let down = (m.clone().slice([0..1, 0..1, 1..h, 0..w]) - m.slice([0..1, 0..1, 0..h - 1, 0..w])).abs().sum();
        (across + down) / (h * w) as f64
    }

    /// The mask as row-major values, `S·S`.
    pub fn mask_values(&self) -> Result<Vec<f32>> {
        values(self.mask())
    }
}

/// A free target vector y_t (outputs, radians), optimised alongside a trigger.
#[derive(Module, Debug)]
pub struct FreeTarget {
    pub value: Param<Tensor<1>>,
}

impl FreeTarget {
    pub fn new(initial: &[f32], device: &Device) -> Self {
        FreeTarget { value: Param::from_tensor(Tensor::<1>::from_floats(initial, device)) }
    }

    /// `[1, d]`, to broadcast against a batch of outputs.
    pub fn row(&self) -> Tensor<2> {
        self.value.val().reshape([1, -1])
    }

    pub fn values(&self) -> Result<Vec<f32>> {
        values(self.value.val())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A trigger that adds one value to every pixel, with a chosen unlearning share.
    #[derive(Debug)]
    struct Paint(f32, f64);

    impl ReversedTrigger for Paint {
        fn apply(&self, x: Tensor<4>) -> Tensor<4> {
            x + self.0
        }

        fn unlearn_ratio(&self) -> f64 {
            self.1
        }
    }

    #[test]
    fn alternating_triggers_take_turns_over_the_batch_and_add_their_shares() {
        let device = Device::flex();
        let both = Alternating(vec![Arc::new(Paint(1.0, 0.2)), Arc::new(Paint(2.0, 0.2))]);
        let out = values(both.apply(Tensor::<4>::zeros([5, 1, 2, 2], &device))).unwrap();
        let firsts: Vec<f32> = out.chunks(4).map(|image| image[0]).collect();
        assert_eq!(firsts, vec![1.0, 2.0, 1.0, 2.0, 1.0]);
        assert!(out.chunks(4).all(|image| image.iter().all(|&v| v == image[0])));
        assert!((both.unlearn_ratio() - 0.4).abs() < 1e-12);
        let greedy = Alternating(vec![Arc::new(Paint(1.0, 0.7)), Arc::new(Paint(2.0, 0.7))]);
        assert_eq!(greedy.unlearn_ratio(), 1.0);
    }

    #[test]
    fn an_alternating_inside_another_uses_all_of_its_triggers_and_images_keep_their_rows() {
        let device = Device::flex();
        let inner = Alternating((1..=4).map(|v| Arc::new(Paint(v as f32, 0.2)) as Arc<dyn ReversedTrigger>).collect());
        let outer = Alternating(vec![Arc::new(inner), Arc::new(Paint(9.0, 0.2))]);
        // Image r holds 100·r, so the output says which image each row came from.
        let rows: Vec<f32> = (0..8).flat_map(|r| [100.0 * r as f32; 4]).collect();
        let x = Tensor::<1>::from_floats(rows.as_slice(), &device).reshape([8, 1, 2, 2]);
        let firsts: Vec<f32> = values(outer.apply(x)).unwrap().chunks(4).map(|image| image[0]).collect();
        assert_eq!(firsts, vec![1.0, 109.0, 202.0, 309.0, 403.0, 509.0, 604.0, 709.0]);
    }
}
