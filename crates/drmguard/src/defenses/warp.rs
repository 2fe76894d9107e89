//! Warp triggers: a smooth field that moves every pixel by up to a few pixels, the shape of
//! WaNet's trigger. No mask and pattern can express it (a mask would cover the whole image and
//! its pattern would have to be the image itself), so unlearning only the mask trigger of Neural
//! Cleanse or the input-agnostic reversal leaves a warp backdoor in place. On a classifier, the
//! warp that sends clean images to each class is reversed here, and unlearning adds the one that
//! reaches its class best to the mask trigger ([`super::class_repair`]).
//!
//! The field lives on a coarse control grid, upsampled bilinearly to the image, so that it stays
//! smooth as a warp trigger is; each pixel is sampled bilinearly at its displaced position, built
//! from `gather` and arithmetic so that the displacement gets a gradient on every backend.

use std::time::Instant;

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::trigger::ReversedTrigger;
use super::unlearn::NC_UNLEARN_RATIO;
use super::{BatchCursor, CleanSet, Suspect, values};
use crate::error::{Error, Result};
use crate::task::argmax;
use crate::models::resize::resize_bilinear;
use crate::models::{Regressor, init_seeded};
use crate::parallel::{map_in_pools, workers_for};
use crate::progress::progress_bar;

/// The warp reversal's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct WarpConfig {
    /// Unlearning on a classifier: also reverse, for every class, the warp that sends clean images
    /// to it, and unlearn the one that reaches its class best beside the mask trigger (each on its
    /// own share of the clean set). A mask cannot express a warp trigger (WaNet), so without it
    /// that backdoor stays.
    #[arg(id = "warp_enabled", long = "warp", value_name = "BOOL", num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// Warp reversal: side of the control grid of the displacement field, upsampled to the image
    /// (WaNet draws its field on a 4 × 4 grid; 8 also fits finer warps).
    #[arg(id = "warp_grid", long = "warp-grid", default_value_t = 8)]
    pub grid: usize,
    /// Warp reversal: the largest displacement of a pixel, in pixels.
    #[arg(id = "warp_max_shift", long = "warp-max-shift", default_value_t = 2.0)]
    pub max_shift: f64,
    /// Warp reversal: weight of the mean displacement (pixels) against the cross-entropy to the
    /// target class, so that the reversal keeps the smallest warp that reaches the class.
    #[arg(id = "warp_cost", long = "warp-cost", default_value_t = 0.1)]
    pub cost: f64,
    /// Warp reversal: optimisation steps.
    #[arg(id = "warp_steps", long = "warp-steps", default_value_t = 300)]
    pub steps: usize,
    /// Warp reversal: Adam's learning rate on the field (before its tanh bound).
    #[arg(id = "warp_lr", long = "warp-lr", default_value_t = 0.05)]
    pub lr: f64,
    /// Warp reversal: batch size.
    #[arg(id = "warp_batch_size", long = "warp-batch-size", default_value_t = 32)]
    pub batch_size: usize,
    /// Warp reversal: unlearn the chosen warp only when it sends at least this share of the
    /// other classes' images to its class (0 unlearns every chosen warp). A WaNet target's warp
    /// reaches 99.8–100% of them, every other class's at most 71% on the Fashion-MNIST test bed;
    /// an unlearnt warp that names no backdoor still takes its share of the unlearning set and
    /// leaves more of a patch backdoor in place (docs/classifiers.md).
    #[arg(id = "warp_min_success", long = "warp-min-success", default_value_t = 0.9)]
    // A config written before the gate read as it ran: every chosen warp unlearnt.
    #[serde(default)]
    pub min_success: f64,
}

impl Default for WarpConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl WarpConfig {
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: &'static str, v: String| Err(Error::invalid(what, v));
        if self.grid < 2 {
            return invalid("warp grid", format!("{} (at least 2)", self.grid));
        }
        if !(self.max_shift > 0.0 && self.max_shift.is_finite()) {
            return invalid("warp max shift", format!("{} (must be > 0)", self.max_shift));
        }
        if !(self.cost >= 0.0 && self.cost.is_finite()) {
            return invalid("warp cost", format!("{} (must be ≥ 0)", self.cost));
        }
        if self.steps == 0 {
            return invalid("warp steps", "0 (at least 1)".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return invalid("warp learning rate", format!("{} (must be > 0)", self.lr));
        }
        if self.batch_size == 0 {
            return invalid("warp batch size", "0 (at least 1)".into());
        }
        if !(0.0..=1.0).contains(&self.min_success) {
            return invalid("warp minimum success", format!("{} (a share, in [0, 1])", self.min_success));
        }
        Ok(())
    }
}

/// A displacement field on a coarse grid: each pixel of the warped image is read at its own
/// position plus the field's displacement there.
#[derive(Module, Debug)]
pub struct WarpTrigger {
    /// `[1, 2, g, g]` (column and row displacement) before the tanh bound.
    pub field_raw: Param<Tensor<4>>,
    /// The largest displacement, in pixels.
    pub max_shift: f64,
}

impl WarpTrigger {
    /// A near-identity warp: the raw field drawn uniform in ±0.01 from the device's generator
    /// (seed it first, e.g. with [`init_seeded`]).
    pub fn random(grid: usize, max_shift: f64, device: &Device) -> Self {
        let field = Tensor::<4>::random([1, 2, grid, grid], Distribution::Uniform(-0.01, 0.01), device);
        WarpTrigger { field_raw: Param::from_tensor(field), max_shift }
    }

    /// The displacement in pixels at every pixel of a `side`-pixel image, `[1, 2, S, S]`
    /// (channel 0 along the columns, 1 along the rows).
    pub fn displacement(&self, side: usize) -> Tensor<4> {
        let bounded = self.field_raw.val().tanh() * self.max_shift;
        resize_bilinear(bounded, [side, side])
    }

    /// The mean absolute displacement over the image and both axes, in pixels.
    pub fn mean_shift(&self, side: usize) -> Tensor<1> {
        self.displacement(side).abs().mean()
    }

    /// Warps images `[n, c, S, S]`: bilinear sampling at the displaced positions, clamped to the
    /// image's border.
    pub fn warp(&self, x: Tensor<4>) -> Tensor<4> {
        let side = x.dims()[2];
        displace(x, self.displacement(side))
    }
}

/// Images `[n, c, S, S]` sampled bilinearly at their pixels' positions plus `field`
/// (`[1, 2, S, S]`, pixels), clamped to the image's border.
pub(super) fn displace(x: Tensor<4>, field: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    assert_eq!(h, w, "warp triggers take square images");
    let side = h;
    let device = x.device();
    let last = (side - 1) as f32;
    let along = |axis: usize| field.clone().slice([0..1, axis..axis + 1, 0..side, 0..side]).reshape([side, side]);
    let positions: Vec<f32> = (0..side).map(|i| i as f32).collect();
    let coordinate = Tensor::<1>::from_floats(positions.as_slice(), &device);
    let columns = coordinate.clone().reshape([1, side]).expand([side, side]);
    let rows = coordinate.reshape([side, 1]).expand([side, side]);
    let u = (columns + along(0)).clamp(0.0, last);
    let v = (rows + along(1)).clamp(0.0, last);
    // The lower corner stays one pixel inside, so that the upper one exists and the weights
    // stay in [0, 1] even on the last row and column.
    let top = (last - 1.0).max(0.0);
    let u0 = u.clone().detach().floor().clamp(0.0, top);
    let v0 = v.clone().detach().floor().clamp(0.0, top);
    let (wu, wv) = (u - u0.clone(), v - v0.clone());
    let step = if side > 1 { 1 } else { 0 };
    let index = |dv: usize, du: usize| -> Tensor<3, Int> {
        let flat = (v0.clone() + (dv * step) as f32) * side as f32 + (u0.clone() + (du * step) as f32);
        flat.int().reshape([1, 1, side * side]).expand([n, c, side * side])
    };
    let flat = x.reshape([n, c, side * side]);
    let read = |dv, du| flat.clone().gather(2, index(dv, du)).reshape([n, c, side, side]);
    let (wu, wv) = (wu.reshape([1, 1, side, side]), wv.reshape([1, 1, side, side]));
    let top_row = read(0, 0) * (wu.clone().neg() + 1.0) + read(0, 1) * wu.clone();
    let bottom_row = read(1, 0) * (wu.clone().neg() + 1.0) + read(1, 1) * wu;
    top_row * (wv.clone().neg() + 1.0) + bottom_row * wv
}

impl ReversedTrigger for WarpTrigger {
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        self.warp(x)
    }

    fn unlearn_ratio(&self) -> f64 {
        NC_UNLEARN_RATIO
    }
}

/// A reversed warp and how well it reaches its class.
#[derive(Debug)]
pub struct WarpReversal {
    /// On the defense's (non-autodiff) device.
    pub trigger: WarpTrigger,
    pub class: usize,
    /// Share of the clean images outside the class that the warp sends to it.
    pub success: f64,
    /// Mean absolute displacement, in pixels.
    pub mean_shift: f64,
    pub steps: usize,
    pub seconds: f64,
}

/// Reverses the warp that sends the clean images of the other classes to `class`, against the
/// frozen suspect (a classifier): cross-entropy to the class plus `cost` times the mean
/// displacement.
pub fn reverse_warp(suspect: &Suspect, clean: &CleanSet, class: usize, config: &WarpConfig, seed: u64, device: &Device) -> Result<WarpReversal> {
    config.validate()?;
    let classes = suspect.task.classes().ok_or_else(|| Error::invalid("task", format!("{}: the warp reversal takes a classifier", suspect.task)))?;
    if class >= classes {
        return Err(Error::invalid("warp target class", format!("{class} (the model has {classes} classes)")));
    }
    clean.check_for(suspect, config.batch_size)?;
    let others: Vec<usize> = (0..clean.len()).filter(|&i| argmax(clean.data().label(i)) != class).collect();
    if others.is_empty() {
        return Err(Error::Data(format!("every clean image is of class {class}: no image to warp into it")));
    }
    let side = suspect.image_size() as usize;
    let ad = device.clone().autodiff();
    let model = suspect.model.clone().fork(&ad).freeze();
    let mut trigger = init_seeded(&ad, seed, || WarpTrigger::random(config.grid, config.max_shift, &ad));
    let mut one_hot = vec![0.0f32; classes];
    one_hot[class] = 1.0;
    let target = Tensor::<1>::from_floats(one_hot.as_slice(), &ad).reshape([1, classes]);
    let mut optim = AdamConfig::new().init();
    let mut batches = BatchCursor::new(others.len(), config.batch_size, seed ^ 0x7761_7270_6261_7463);
    let bar = progress_bar("warp reversal", config.steps);
    let started = Instant::now();
    for step in 0..config.steps {
        let picked: Vec<usize> = batches.next_batch().iter().map(|&k| others[k]).collect();
        let (x, _) = clean.batch(&picked, &ad);
        // One displacement per step, for the warp and for its cost.
        let field = trigger.displacement(side);
        let y = model.forward(displace(x, field.clone()));
        let n = y.dims()[0];
        let fit = crate::train::task_loss(suspect.task, y, target.clone().expand([n, classes]));
        let loss = fit + field.abs().mean() * config.cost;
        let value = loss.clone().into_scalar::<f32>();
        if !value.is_finite() {
            return Err(Error::Numerical(format!("the warp reversal's loss became {value} at step {step}")));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &trigger);
        trigger = optim.step(config.lr, trigger, grads);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let trigger = trigger.valid();
    let mean_shift = trigger.mean_shift(side).into_scalar::<f32>() as f64;
    let success = class_share(suspect, clean, &others, class, classes, config.batch_size, &trigger, device)?;
    tracing::info!(class, success, mean_shift, "warp reversed");
    Ok(WarpReversal { trigger, class, success, mean_shift, steps: config.steps, seconds: started.elapsed().as_secs_f64() })
}

/// Every class's warp, side by side where the pool has threads for them (class k on its own
/// seed).
pub fn reverse_class_warps(suspect: &Suspect, clean: &CleanSet, config: &WarpConfig, seed: u64, device: &Device) -> Result<Vec<WarpReversal>> {
    let classes = suspect.task.classes().ok_or_else(|| Error::invalid("task", format!("{}: the warp reversal takes a classifier", suspect.task)))?;
    map_in_pools(classes, workers_for(classes), |k| reverse_warp(suspect, clean, k, config, seed.wrapping_add(k as u64), device))
}

/// The class a warp backdoor sends images to: the one whose warp reaches it for the largest
/// share of the other classes' images (the smaller warp on a tie). The class a mask search
/// names need not be it: on WaNet models the smallest class mask is often another class's.
pub fn warp_target(warps: &[WarpReversal]) -> Option<usize> {
    warps.iter().enumerate().max_by(|(_, a), (_, b)| a.success.total_cmp(&b.success).then(b.mean_shift.total_cmp(&a.mean_shift))).map(|(k, _)| k)
}

/// Share of the images `picked` that the suspect puts in `class` once warped.
#[allow(clippy::too_many_arguments)]
fn class_share(suspect: &Suspect, clean: &CleanSet, picked: &[usize], class: usize, classes: usize, batch_size: usize, trigger: &WarpTrigger, device: &Device) -> Result<f64> {
    let mut hits = 0usize;
    for chunk in picked.chunks(batch_size) {
        let (x, _) = clean.batch(chunk, device);
        let logits = values(suspect.model.forward(trigger.warp(x)))?;
        hits += logits.chunks_exact(classes).filter(|row| argmax(row) == class).count();
    }
    Ok(hits as f64 / picked.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(side: usize, device: &Device) -> Tensor<4> {
        let v: Vec<f32> = (0..side * side).map(|i| (i % side) as f32).collect();
        Tensor::<1>::from_floats(v.as_slice(), device).reshape([1, 1, side, side])
    }

    fn constant_shift(grid: usize, columns: f32, rows: f32, max_shift: f64, device: &Device) -> WarpTrigger {
        // The raw value whose tanh, times the bound, is the wanted shift.
        let raw = |s: f32| (s / max_shift as f32).atanh();
        let mut field = vec![raw(columns); grid * grid];
        field.extend(vec![raw(rows); grid * grid]);
        let field = Tensor::<1>::from_floats(field.as_slice(), device).reshape([1, 2, grid, grid]);
        let mut t = WarpTrigger::random(grid, max_shift, device);
        t.field_raw = Param::from_tensor(field);
        t
    }

    #[test]
    fn a_uniform_shift_reads_each_pixel_from_its_neighbour_and_clamps_at_the_border() {
        let device = Device::flex();
        // Pixel value = its column; half a pixel to the right reads column + 0.5.
        let warped = values(constant_shift(4, 0.5, 0.0, 2.0, &device).warp(ramp(6, &device))).unwrap();
        for row in warped.chunks(6) {
            for (col, &v) in row.iter().enumerate() {
                let expected = (col as f32 + 0.5).min(5.0);
                assert!((v - expected).abs() < 1e-4, "column {col}: {v} against {expected}");
            }
        }
        // A shift along the rows leaves a column ramp unchanged.
        let down = values(constant_shift(4, 0.0, 1.5, 2.0, &device).warp(ramp(6, &device))).unwrap();
        let same = values(ramp(6, &device)).unwrap();
        assert!(down.iter().zip(&same).all(|(a, b)| (a - b).abs() < 1e-4));
    }

    #[test]
    fn the_warp_gives_its_field_a_gradient_and_stays_within_its_bound() {
        let device = Device::flex();
        let ad = device.clone().autodiff();
        let trigger = init_seeded(&ad, 3, || WarpTrigger::random(4, 1.0, &ad));
        let loss = trigger.warp(ramp(8, &ad)).sum();
        let grads = loss.backward();
        let g = trigger.field_raw.val().grad(&grads).expect("the field has a gradient");
        assert!(values(g.abs().sum()).unwrap()[0] > 0.0);
        let big = constant_shift(4, 0.999, -0.999, 1.0, &device);
        let shift = values(big.displacement(8).abs().max()).unwrap()[0];
        assert!(shift <= 1.0 + 1e-5, "{shift}");
    }

    #[test]
    fn the_warp_target_reaches_its_class_best_and_the_smaller_warp_breaks_a_tie() {
        let device = Device::flex();
        let reversal = |class, success, mean_shift| WarpReversal { trigger: WarpTrigger::random(2, 1.0, &device), class, success, mean_shift, steps: 1, seconds: 0.0 };
        let warps = vec![reversal(0, 0.4, 0.5), reversal(1, 0.99, 0.9), reversal(2, 0.99, 0.6), reversal(3, 0.2, 0.1)];
        assert_eq!(warp_target(&warps), Some(2));
        assert_eq!(warp_target(&[]), None);
    }

    #[test]
    fn settings_no_reversal_could_use_are_refused() {
        assert!(WarpConfig::default().validate().is_ok());
        for bad in [
            WarpConfig { grid: 1, ..Default::default() },
            WarpConfig { max_shift: 0.0, ..Default::default() },
            WarpConfig { cost: -1.0, ..Default::default() },
            WarpConfig { steps: 0, ..Default::default() },
            WarpConfig { lr: f64::NAN, ..Default::default() },
            WarpConfig { batch_size: 0, ..Default::default() },
            WarpConfig { min_success: 1.5, ..Default::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} was accepted");
        }
    }
}
