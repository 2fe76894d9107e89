//! Input-Aware dynamic backdoor (Nguyen & Tran 2020): every image gets its own trigger. A pattern
//! network G and a mask network M (encoder–decoders) turn x into
//! x' = x + (G(x) − x) · m(x), with m(x) = tanh(20 · M(x) − 10) / 2 + 0.5 a nearly binary mask.
//! Training follows the authors' `train.py`:
//!
//! 1. M alone, `mask_epochs` epochs: λ_norm · mean(relu(m − density)) keeps the mask small, the
//!    diversity loss ‖x1 − x2‖ / ‖m(x1) − m(x2)‖ makes masks differ between images.
//! 2. G jointly with a regression model, M frozen: in every batch the first 10% carry their own
//!    trigger and the target, the next 10% ("cross" samples) carry the trigger of another image and
//!    keep their true labels, so that a trigger only works on the image it was made for; G also
//!    gets the diversity loss on its patterns.
//!
//! Defaults are the authors' (λ_div 1, λ_norm 100, density 0.032, Adam 1e-2 with β (0.5, 0.9),
//! cross share equal to the poison share) except for size: the networks are drmguard's 13-conv
//! encoder–decoder at width 8 (the authors' is 32 wide on CIFAR-10), trained for 10 mask and 10
//! pattern epochs of 2048 images (the authors: 25 mask epochs, then hundreds jointly), about four
//! minutes on 2 CPU cores at 32×32; width 16 and 25 mask epochs took 17.
//!
//! Unlike the original, stage 2 trains G with the attacker's own model (a small CNN of the task)
//! rather than with the victim, so that the trigger is a function of the attack's config, task,
//! image size and seed alone, like ISSBA's encoder: training, evaluation and `drmguard poison` all
//! build the same trigger from the model's sidecar. The victim then learns the backdoor from G's
//! poisoned and cross samples, drawn afresh in every batch as in the original. The networks are
//! cached (`attacks/input-aware-KEY.safetensors`) and retrained, deterministically, when missing.

use std::path::Path;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Attack, BackdoorSpec};
use crate::models::generator::{Generator, GeneratorKind};
use crate::error::{Error, Result};
use crate::models::{Regressor, init_seeded};
use crate::task::Task;
use crate::train::{Profile, TrainConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct InputAwareConfig {
    /// Input-Aware: base width of the pattern and mask networks (encoder–decoders).
    #[arg(id = "ia_width", long = "ia-width", default_value_t = 8)]
    pub width: usize,
    /// Input-Aware: epochs of mask training before the pattern network's.
    #[arg(id = "ia_mask_epochs", long = "ia-mask-epochs", default_value_t = 10)]
    pub mask_epochs: usize,
    /// Input-Aware: epochs of the pattern network, trained with the attacker's model.
    #[arg(id = "ia_epochs", long = "ia-epochs", default_value_t = 10)]
    pub epochs: usize,
    /// Input-Aware: built-in images of the task the networks are trained on.
    #[arg(id = "ia_images", long = "ia-images", default_value_t = 2048)]
    pub images: usize,
    /// Input-Aware: weight of the diversity loss.
    #[arg(id = "ia_lambda_div", long = "ia-lambda-div", default_value_t = 1.0)]
    pub lambda_div: f32,
    /// Input-Aware: weight of the mask's size loss.
    #[arg(id = "ia_lambda_norm", long = "ia-lambda-norm", default_value_t = 100.0)]
    pub lambda_norm: f32,
    /// Input-Aware: share of the image a mask may cover before it is penalised.
    #[arg(id = "ia_mask_density", long = "ia-mask-density", default_value_t = 0.032)]
    pub mask_density: f32,
    /// Input-Aware: cross samples per poisoned sample.
    #[arg(id = "ia_cross_ratio", long = "ia-cross-ratio", default_value_t = 1.0)]
    pub cross_ratio: f64,
    /// Input-Aware: Adam learning rate of both networks.
    #[arg(id = "ia_lr", long = "ia-lr", default_value_t = 1e-2)]
    pub lr: f64,
}

impl Default for InputAwareConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

/// Batch size of both training stages.
const BATCH: usize = 64;
/// Share of each stage-2 batch that carries its own trigger (the authors' `p_attack`).
const POISON_SHARE: f64 = 0.1;
/// Keeps the diversity ratio finite when two patterns coincide (the authors' `EPSILON`).
const DIV_EPS: f32 = 1e-7;

impl InputAwareConfig {
    pub fn validate(&self) -> Result<()> {
        if !(1..=128).contains(&self.width) {
            return Err(Error::invalid("Input-Aware width", format!("{} (must be within 1..=128)", self.width)));
        }
        if self.images < BATCH || self.epochs == 0 {
            return Err(Error::invalid(
                "Input-Aware training",
                format!("{} epochs on {} images (need ≥ 1 epoch and ≥ {BATCH} images)", self.epochs, self.images),
            ));
        }
        let finite_nonneg = |v: f32| v.is_finite() && v >= 0.0;
        if !finite_nonneg(self.lambda_div) || !finite_nonneg(self.lambda_norm) {
            return Err(Error::invalid("Input-Aware λ_div / λ_norm", format!("{} / {} (must be finite and ≥ 0)", self.lambda_div, self.lambda_norm)));
        }
        if !(self.mask_density > 0.0 && self.mask_density < 1.0) {
            return Err(Error::invalid("Input-Aware mask density", format!("{} (must be in (0, 1))", self.mask_density)));
        }
        if !(self.cross_ratio >= 0.0 && self.cross_ratio <= 5.0) {
            return Err(Error::invalid("Input-Aware cross ratio", format!("{} (must be within [0, 5])", self.cross_ratio)));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid("Input-Aware learning rate", format!("{}", self.lr)));
        }
        Ok(())
    }

    /// The trigger of this config, task, size and seed (from the cache, or trained and cached).
    pub fn build(&self, task: Task, size: u32, seed: u64) -> Result<InputAware> {
        self.build_in(&crate::io::cache_root().join("attacks"), task, size, seed)
    }

    /// [`build`](Self::build) with the networks cached in `cache_dir`.
    pub fn build_in(&self, cache_dir: &Path, task: Task, size: u32, seed: u64) -> Result<InputAware> {
        self.validate()?;
        crate::data::validate_image_size(size)?;
        let device = Device::flex();
        let key = crate::io::short_hash(&(self, task, size, seed, env!("CARGO_PKG_VERSION")));
        let path = cache_dir.join(format!("input-aware-{key}.safetensors"));
        let empty = || init_seeded(&device, 0, || Networks::new(self.width, &device));
        let networks = match crate::models::cache::load_cached(&path, "Input-Aware networks", empty) {
            Some(n) => n,
            None => {
                tracing::info!(path = %path.display(), "training the Input-Aware networks (cached for later runs)");
                let networks = self.train(task, size, seed, &device)?;
                crate::models::cache::save_cached(&networks, &path)?;
                networks
            }
        };
        Ok(InputAware { networks, cross_ratio: self.cross_ratio })
    }

    /// Both training stages on `images` built-in images of `task`.
    pub fn train(&self, task: Task, size: u32, seed: u64, device: &Device) -> Result<Networks> {
        self.validate()?;
        let data = crate::data::synthesize(task, self.images, size, seed ^ 0x1a00_da7a_0000_0001)?;
        let ad = device.clone().autodiff();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1a00_5eed_0000_0002);
        let networks = init_seeded(&ad, seed ^ 0x1a00_0000_0417_0003, || Networks::new(self.width, &ad));
        let adam = || AdamConfig::new().with_beta_1(0.5).with_beta_2(0.9).init();
        let steps = data.len() / BATCH;
        let pairs = |rng: &mut ChaCha8Rng| {
            let mut a: Vec<usize> = (0..data.len()).collect();
            let mut b = a.clone();
            a.shuffle(rng);
            b.shuffle(rng);
            (a, b)
        };
        let diversity = |x1: Tensor<4>, x2: Tensor<4>, g1: Tensor<4>, g2: Tensor<4>| -> Tensor<1> {
            // The 1e-12 keeps sqrt's gradient finite where two saturated masks coincide exactly.
            let rms = |t: Tensor<4>| (t.powi_scalar(2).mean_dim(3).mean_dim(2).mean_dim(1) + 1e-12).sqrt().flatten::<1>(0, 3);
            (rms(x1 - x2) / (rms(g1 - g2) + DIV_EPS)).mean()
        };
        let check = |value: f32, what: &str, epoch: usize| {
            if value.is_finite() { Ok(()) } else { Err(Error::Numerical(format!("Input-Aware {what} loss became {value} in epoch {epoch}"))) }
        };

        let bar = crate::progress::progress_bar("input-aware", (self.mask_epochs + self.epochs) * steps);
        // Stage 1: the mask network alone.
        let mut mask = networks.mask;
        let mut optim_m = adam();
        for epoch in 0..self.mask_epochs {
            let (a, b) = pairs(&mut rng);
            for s in 0..steps {
                let (x1, _) = data.batch(&a[s * BATCH..(s + 1) * BATCH], &ad);
                let (x2, _) = data.batch(&b[s * BATCH..(s + 1) * BATCH], &ad);
                let (m1, m2) = (threshold(mask.forward(x1.clone())), threshold(mask.forward(x2.clone())));
                let norm = relu(m1.clone() - self.mask_density).mean();
                let loss = norm * self.lambda_norm + diversity(x1, x2, m1, m2) * self.lambda_div;
                let value = loss.clone().into_scalar::<f32>();
                check(value, "mask", epoch)?;
                bar.set_message(format!("mask epoch {}/{}, loss {value:.3}", epoch + 1, self.mask_epochs));
                bar.inc(1);
                let grads = GradientsParams::from_grads(loss.backward(), &mask);
                mask = optim_m.step(self.lr, mask, grads);
            }
            tracing::info!(epoch = epoch + 1, of = self.mask_epochs, "input-aware: mask epoch done");
        }
        let frozen_mask = mask.valid();

        // Stage 2: the pattern network with the attacker's regression model, the mask frozen.
        let mut attacker_config = TrainConfig::new(task, Profile::Smoke, seed);
        attacker_config.image_size = size;
        let mut attacker = attacker_config.model_spec().init(&ad, seed ^ 0x1a00_0000_0417_0004)?;
        let target = BackdoorSpec::default_target(task, seed);
        let mut pattern = networks.pattern;
        let (mut optim_g, mut optim_c) = (adam(), AdamConfig::new().init());
        let n_bd = ((BATCH as f64 * POISON_SHARE) as usize).max(1);
        let n_cross = ((n_bd as f64 * self.cross_ratio) as usize).min(BATCH - n_bd);
        for epoch in 0..self.epochs {
            let (a, b) = pairs(&mut rng);
            for s in 0..steps {
                let (x1, y1) = data.batch(&a[s * BATCH..(s + 1) * BATCH], &ad);
                let (x2, _) = data.batch(&b[s * BATCH..(s + 1) * BATCH], &ad);
                // Off the graph: to G's step the mask is a constant.
                let mask_of = |x: Tensor<4>| threshold(frozen_mask.forward(x.inner()));
                let stamp = |x: Tensor<4>, p: Tensor<4>, m: Tensor<4>| x.clone() + (p - x) * m;
                let own = x1.clone().narrow(0, 0, n_bd);
                let p1 = pattern.forward(own.clone());
                let poisoned = stamp(own.clone(), p1.clone(), mask_of(own.clone()));
                let others = x2.clone().narrow(0, 0, n_bd);
                let p2 = pattern.forward(others.clone());
                let mut rows = vec![poisoned];
                if n_cross > 0 {
                    let donors = x2.clone().narrow(0, n_bd, n_cross);
                    let kept = x1.clone().narrow(0, n_bd, n_cross);
                    rows.push(stamp(kept, pattern.forward(donors.clone()), mask_of(donors)));
                }
                rows.push(x1.clone().narrow(0, n_bd + n_cross, BATCH - n_bd - n_cross));
                let images = Tensor::cat(rows, 0);
                let d = target.len();
                let targets = Tensor::<2>::from_data(TensorData::new(target.iter().copied().cycle().take(n_bd * d).collect::<Vec<f32>>(), [n_bd, d]), &ad);
                let labels = Tensor::cat(vec![targets, y1.narrow(0, n_bd, BATCH - n_bd)], 0);
                let regression = (attacker.forward(images) - labels).abs().mean();
                let loss = regression + diversity(own, others, p1, p2) * self.lambda_div;
                let value = loss.clone().into_scalar::<f32>();
                check(value, "pattern", epoch)?;
                bar.set_message(format!("pattern epoch {}/{}, loss {value:.3}", epoch + 1, self.epochs));
                bar.inc(1);
                let mut grads = loss.backward();
                let grads_g = GradientsParams::from_module(&mut grads, &pattern);
                let grads_c = GradientsParams::from_module(&mut grads, &attacker);
                pattern = optim_g.step(self.lr, pattern, grads_g);
                attacker = optim_c.step(attacker_config.learning_rate, attacker, grads_c);
            }
            tracing::info!(epoch = epoch + 1, of = self.epochs, "input-aware: pattern epoch done");
        }
        bar.finish_and_clear();
        Ok(Networks { pattern: pattern.valid(), mask: frozen_mask })
    }
}

/// The nearly binary mask of the mask network's output in (0, 1): a steep step at 0.5.
fn threshold(m: Tensor<4>) -> Tensor<4> {
    (m * 20.0 - 10.0).tanh() / (2.0 + DIV_EPS) + 0.5
}

/// The pattern network G (3 channels) and the mask network M (1 channel).
#[derive(Module, Debug)]
pub struct Networks {
    pub pattern: Generator,
    pub mask: Generator,
}

impl Networks {
    fn new(width: usize, device: &Device) -> Self {
        Networks {
            pattern: Generator::with_outputs(GeneratorKind::EncoderDecoder, width, 3, None, device),
            mask: Generator::with_outputs(GeneratorKind::EncoderDecoder, width, 1, None, device),
        }
    }
}

/// The trigger: trained pattern and mask networks, in inference mode.
#[derive(Debug, Clone)]
pub struct InputAware {
    networks: Networks,
    cross_ratio: f64,
}

impl InputAware {
    /// The pattern G(x) and the thresholded mask m(x) (`[n, 1, S, S]`) of each image, computed off
    /// any autodiff graph.
    pub fn pattern_and_mask(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let device = x.device();
        let n = self.networks.clone().fork(&device);
        (n.pattern.forward(x.clone()), threshold(n.mask.forward(x)))
    }
}

impl Attack for InputAware {
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        // p and m are computed off any autodiff graph: to a training step they are constants.
        let (p, m) = self.pattern_and_mask(x.clone().inner());
        x.clone() + (p - x) * m
    }

    /// Each image gets the trigger of another image of the batch (a random non-zero rotation).
    fn cross(&self, x: Tensor<4>, rng: &mut dyn RngCore) -> Option<Tensor<4>> {
        let n = x.dims()[0];
        if n < 2 {
            return Some(x);
        }
        let shift = rng.random_range(1..n);
        let order: Vec<i64> = (0..n).map(|i| ((i + shift) % n) as i64).collect();
        let inner = x.clone().inner();
        let donors = inner.clone().select(0, Tensor::<1, Int>::from_data(TensorData::new(order, [n]), &inner.device()));
        let (p, m) = self.pattern_and_mask(donors);
        Some(x.clone() + (p - x) * m)
    }

    fn cross_ratio(&self) -> f64 {
        self.cross_ratio
    }

    fn poisons_every_batch(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_threshold_is_a_steep_step_at_one_half() {
        let device = Device::flex();
        let m = Tensor::<1>::from_floats([0.0, 0.4, 0.5, 0.6, 1.0], &device).reshape([1, 1, 1, 5]);
        let v = threshold(m).into_data().try_to_vec::<f32>().unwrap();
        assert!(v[0] < 1e-4 && v[1] < 0.02 && (v[2] - 0.5).abs() < 1e-4 && v[3] > 0.98 && v[4] > 0.9999, "{v:?}");
    }
}
