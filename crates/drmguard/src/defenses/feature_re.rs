//! FeatureRE (Wang et al., NeurIPS 2022; method.md §9.2), adapted to regression. An input-space
//! transform A (a U-Net) and a mask m over the penultimate features are trained jointly: the
//! features of A(x) inside the mask, mixed with a random clean image's features outside it, must
//! drive the head to a free target vector y_t, while A(x) stays close to x, the masked features
//! vary little across images, and the mask stays small. Each constraint enters the loss only
//! while it is violated, with weights that grow with the violation (the original's bounds).
//!
//! The score is the original's "mixed value", −(share of images reaching y_t) plus the relative
//! bound violations, best over epochs; the model is flagged below −0.75. The original's
//! distance to the target class's mean feature has no analogue without classes and is dropped
//! (the original's `ignore_dist` switch).

use std::time::Instant;

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::models::generator::{Generator, GeneratorKind};
use super::trigger::FreeTarget;
use super::{BatchCursor, CleanSet, Detection, Detector, Figure, Finding, Suspect, clean_features, scalar, values};
use crate::progress::progress_bar;
use crate::data::to_images;
use crate::error::{Error, Result};
use crate::metrics::share_within;
use crate::models::{Regressor, init_seeded};
use crate::figures::reversed::reversal_figure;

/// FeatureRE settings: the original's bounds and optimisers, fewer steps for CPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct FeatureReConfig {
    /// FeatureRE: warm-up steps training the transform alone towards y_t (the original: 100 epochs).
    #[arg(id = "featurere_warmup_steps", long = "featurere-warmup-steps", default_value_t = 100)]
    pub warmup_steps: usize,
    /// FeatureRE: steps of the joint transform-and-mask optimisation (the original: 400 epochs).
    #[arg(id = "featurere_steps", long = "featurere-steps", default_value_t = 400)]
    pub steps: usize,
    /// FeatureRE: mini-batches per epoch, after which the bound weights are updated.
    #[arg(id = "featurere_epoch_steps", long = "featurere-epoch-steps", default_value_t = 10)]
    pub epoch_steps: usize,
    /// FeatureRE: images per step.
    #[arg(id = "featurere_batch_size", long = "featurere-batch-size", default_value_t = 50)]
    pub batch_size: usize,
    /// FeatureRE: base width of the U-Net transform (the original: 32).
    #[arg(id = "featurere_width", long = "featurere-width", default_value_t = 16)]
    pub width: usize,
    /// FeatureRE: Adam learning rate of the transform (β = 0.5, 0.9).
    #[arg(id = "featurere_lr", long = "featurere-lr", default_value_t = 1e-3)]
    pub lr: f64,
    /// FeatureRE: Adam learning rate of the feature mask.
    #[arg(id = "featurere_mask_lr", long = "featurere-mask-lr", default_value_t = 0.1)]
    pub mask_lr: f64,
    /// FeatureRE: Adam learning rate of the free target vector (radians).
    #[arg(id = "featurere_target_lr", long = "featurere-target-lr", default_value_t = 0.01)]
    pub target_lr: f64,
    /// FeatureRE: bound on the mean squared change of the transformed images (in [0, 1]; the
    /// original's 0.15 was on normalised images, std ≈ 0.25, hence 0.15 · 0.25² ≈ 0.01).
    #[arg(id = "featurere_p_loss_bound", long = "featurere-p-loss-bound", default_value_t = 0.01)]
    pub p_loss_bound: f64,
    /// FeatureRE: bound on the masked features' standard deviation per unit of mask.
    #[arg(id = "featurere_std_bound", long = "featurere-std-bound", default_value_t = 1.0)]
    pub std_bound: f64,
    /// FeatureRE: bound on the mask's L1 norm, as a share of the features.
    #[arg(id = "featurere_mask_size", long = "featurere-mask-size", default_value_t = 0.03)]
    pub mask_size: f64,
    /// FeatureRE: share of images that must reach y_t before the fit term is dropped.
    #[arg(id = "featurere_success", long = "featurere-success", default_value_t = 0.9)]
    pub success: f64,
    /// FeatureRE: an image reaches y_t when its output is within this error (degrees).
    #[arg(id = "featurere_tolerance_deg", long = "featurere-tolerance-deg", default_value_t = 5.0)]
    pub tolerance_deg: f64,
    /// FeatureRE: flag the model when the best mixed value falls below this.
    #[arg(id = "featurere_threshold", long = "featurere-threshold", default_value_t = -0.75, allow_hyphen_values = true)]
    pub threshold: f64,
}

impl Default for FeatureReConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl FeatureReConfig {
    pub fn validate(&self) -> Result<()> {
        let positive = |v: f64| v > 0.0 && v.is_finite();
        let ok = self.steps >= 1
            && self.epoch_steps >= 1
            && self.batch_size >= 2
            && (1..=256).contains(&self.width)
            && [self.lr, self.mask_lr, self.target_lr, self.p_loss_bound, self.std_bound, self.mask_size, self.tolerance_deg].into_iter().all(positive)
            && self.success > 0.0
            && self.success <= 1.0
            && self.threshold.is_finite();
        if !ok {
            return Err(Error::invalid("FeatureRE settings", format!("{self:?}")));
        }
        Ok(())
    }
}

/// The feature-space mask, squashed into (0, 1) as in the original.
#[derive(Module, Debug)]
struct FeatureMask {
    raw: Param<Tensor<1>>,
}

impl FeatureMask {
    fn new(k: usize, device: &Device) -> Self {
        // The original starts every entry at tanh(1) / 2 + 0.5 ≈ 0.88.
        FeatureMask { raw: Param::from_tensor(Tensor::<1>::ones([k], device)) }
    }

    fn value(&self) -> Tensor<2> {
        (self.raw.val().tanh() / (2.0 + 1e-7) + 0.5).reshape([1, -1])
    }
}

/// One epoch's averages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureReEpoch {
    pub epoch: usize,
    pub success: f64,
    pub p_loss: f64,
    pub mask_norm: f64,
    pub std_loss: f64,
    pub mixed_value: f64,
}

#[derive(Debug, Clone)]
pub struct FeatureRe {
    pub config: FeatureReConfig,
}

/// Sums of one epoch's statistics.
#[derive(Default)]
struct EpochSums {
    success: f64,
    p_loss: f64,
    mask_norm: f64,
    std_loss: f64,
    batches: usize,
}

impl Detector for FeatureRe {
    fn name(&self) -> &'static str {
        "featurere"
    }

    fn detect(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Finding> {
        let c = &self.config;
        c.validate()?;
        clean.check_for(suspect, c.batch_size)?;
        let started = Instant::now();
        let task = suspect.task;
        let ad = device.clone().autodiff();
        let model = suspect.model.clone().fork(&ad).freeze();
        // Reference features of the clean set, mixed in outside the mask.
        let reference = clean_features(&suspect.model, clean, c.batch_size)?.to_device(&ad);
        let k = reference.dims()[1];
        let mean = clean.mean_output(&suspect.model, c.batch_size)?;

        let mut transform = init_seeded(&ad, seed, || Generator::new(GeneratorKind::Unet, c.width, None, &ad));
        let mut mask = FeatureMask::new(k, &ad);
        let mut target = FreeTarget::new(&mean, &ad);
        let adam = || AdamConfig::new().with_beta_1(0.5).with_beta_2(0.9);
        let (mut transform_optim, mut mask_optim, mut target_optim) = (adam().init(), adam().init(), adam().init());
        let mut batches = BatchCursor::new(clean.len(), c.batch_size, seed ^ 0x6665_6174_7572_6572);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_6665_7265_6e63);
        let mask_bound = k as f64 * c.mask_size;
        let (mut w_p, mut w_acc, mut w_std) = (1.0f64, 1.0f64, 1.0f64);
        let mut history = Vec::new();
        let mut best = f64::INFINITY;
        let mut sums = EpochSums::default();
        let fit = |y: Tensor<2>, t: Tensor<2>| (y - t).abs().mean() * task.units_per_label();

        let bar = progress_bar("featurere", c.warmup_steps + c.steps);
        for step in 0..c.warmup_steps + c.steps {
            let warm_up = step < c.warmup_steps;
            let (x, _) = clean.batch(batches.next_batch(), &ad);
            let n = x.dims()[0];
            let reversed = transform.forward(x.clone());
            let p_loss = (reversed.clone() - x.clone()).powi_scalar(2).mean();
            let p_value = scalar(p_loss.clone());
            let features = model.features(reversed.clone());
            let picks: Vec<i64> = (0..n).map(|_| rng.random_range(0..reference.dims()[0]) as i64).collect();
            let refs = reference.clone().select(0, Tensor::<1, Int>::from_ints(picks.as_slice(), &ad));
            let mix = |m: Tensor<2>, f: Tensor<2>| f * m.clone() + refs.clone() * (m.neg() + 1.0);

            // The transform's step (and y_t's), with the mask fixed.
            let m = mask.value().detach();
            let y = if warm_up { model.head(features.clone()) } else { model.head(mix(m.clone(), features.clone())) };
            let success = share_within(task, &values(y.clone().detach())?, &target.values()?, c.tolerance_deg);
            // Each term enters only while its constraint is violated; with none, the step is skipped.
            let mut terms: Vec<Tensor<1>> = Vec::new();
            let mut std_value = 0.0;
            if warm_up {
                terms.push(fit(y, target.row()));
                if p_value > c.p_loss_bound {
                    terms.push(p_loss * 100.0);
                }
            } else {
                let std_loss = (features.clone() * m.clone()).var(0).sqrt().sum() / m.clone().sum();
                std_value = scalar(std_loss.clone());
                if std_value > c.std_bound {
                    terms.push(std_loss * (10.0 * (1.0 + w_std)));
                }
                if p_value > c.p_loss_bound {
                    terms.push(p_loss * (10.0 * (1.0 + w_p)));
                }
                if success < c.success {
                    terms.push(fit(y, target.row()) * (1.0 + w_acc));
                }
            }
            if let Some(loss) = terms.into_iter().reduce(|a, b| a + b) {
                if !scalar(loss.clone()).is_finite() {
                    return Err(Error::Numerical(format!("FeatureRE's loss became non-finite at step {step}")));
                }
                let mut grads = loss.backward();
                let transform_grads = GradientsParams::from_module(&mut grads, &transform);
                let target_grads = GradientsParams::from_module(&mut grads, &target);
                transform = transform_optim.step(c.lr, transform, transform_grads);
                if !target_grads.is_empty() {
                    target = target_optim.step(c.target_lr, target, target_grads);
                }
            }

            if !warm_up {
                // The mask's step, with the transform fixed: fit plus the L1 norm while over its bound.
                let features = model.features(transform.forward(x).detach());
                let m = mask.value();
                let y = model.head(mix(m.clone(), features));
                let norm = m.sum();
                let norm_value = scalar(norm.clone());
                let mut mask_loss = fit(y, target.row().detach());
                if norm_value > mask_bound {
                    mask_loss = mask_loss + norm;
                }
                let grads = GradientsParams::from_grads(mask_loss.backward(), &mask);
                mask = mask_optim.step(c.mask_lr, mask, grads);
                sums.success += success;
                sums.p_loss += p_value;
                sums.mask_norm += norm_value;
                sums.std_loss += std_value;
                sums.batches += 1;
                if sums.batches == c.epoch_steps || step + 1 == c.warmup_steps + c.steps {
                    let b = sums.batches as f64;
                    let (success, p_loss, mask_norm, std_loss) = (sums.success / b, sums.p_loss / b, sums.mask_norm / b, sums.std_loss / b);
                    let over = |v: f64, bound: f64| (v - bound).max(0.0) / bound;
                    let mixed_value = -success + over(p_loss, c.p_loss_bound) + over(mask_norm, mask_bound) + over(std_loss, c.std_bound);
                    best = best.min(mixed_value);
                    w_p = over(p_loss, c.p_loss_bound);
                    w_acc = (c.success - success).max(0.0) / c.success;
                    w_std = over(std_loss, c.std_bound);
                    history.push(FeatureReEpoch { epoch: history.len(), success, p_loss, mask_norm, std_loss, mixed_value });
                    bar.set_message(format!("success {success:.2}, mixed value {mixed_value:.3} (best {best:.3})"));
                    sums = EpochSums::default();
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let seconds_per_step = started.elapsed().as_secs_f64() / (c.warmup_steps + c.steps) as f64;
        let transform = transform.valid();
        let target = target.values()?;
        let mask_values = values(mask.value())?;
        let details = serde_json::json!({
            "mixed_value": best,
            "estimated_target": target,
            "estimated_target_deg": target.iter().map(|&v| suspect.task.to_unit(v)).collect::<Vec<_>>(),
            "mask": mask_values,
            "mask_norm": mask_values.iter().sum::<f32>(),
            "mask_bound": mask_bound,
            "steps": c.warmup_steps + c.steps,
            "seconds_per_step": seconds_per_step,
            "history": history,
        });
        let detection = Detection::decide("featurere", best, c.threshold, true, started.elapsed().as_secs_f64(), details);

        let shown: Vec<usize> = (0..clean.len().min(8)).collect();
        let (x, _) = clean.batch(&shown, device);
        let figures = vec![Figure {
            file: "reversed.png".into(),
            caption: "Rows: clean images, the transform A(x), and |A(x) − x| (white = 0.25).".into(),
            image: reversal_figure(&to_images(x.clone())?, &to_images(transform.forward(x))?, 0.25)?,
        }];
        let deg = |v: &[f32]| suspect.task.format_values(v);
        let rows = vec![
            ("best mixed value".into(), format!("{best:.4}")),
            ("estimated target y_t".into(), deg(&target)),
            ("feature mask L1 / bound".into(), format!("{:.2} / {:.2} ({k} features)", mask_values.iter().sum::<f32>(), mask_bound)),
            ("steps".into(), format!("{} warm-up + {} ({:.3} s/step)", c.warmup_steps, c.steps, seconds_per_step)),
        ];
        Ok(Finding {
            detection,
            config: serde_json::to_value(c).map_err(|e| Error::Numerical(e.to_string()))?,
            seed,
            rule: "score = best mixed value (−success + relative bound violations); backdoored iff score < threshold".into(),
            rows,
            figures,
            trigger: None,
        })
    }
}
