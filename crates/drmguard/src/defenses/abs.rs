//! ABS, Artificial Brain Stimulation (Liu et al., CCS 2019; method.md §9.6), adapted to
//! regression. Stimulation analysis: each channel ("neuron") of an inner convolutional layer is
//! set to a range of values on a few seed images, and the change of the output vector is
//! measured. A neuron a trigger has hijacked moves every image's output far, and to the same
//! place; its elevation is the mean output change minus the spread of the stimulated outputs
//! (the regression analogue of "one label's logit rises above the rest on every image").
//! For the most elevating neurons, a small mask-and-pattern trigger that maximises the neuron is
//! reverse-engineered; REASR is the share of clean images that the stamped trigger collapses
//! onto one output (within a tolerance of their mean). The score is the best REASR.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::trigger::MaskTrigger;
use super::{CleanSet, Detection, Detector, Figure, Finding, Suspect, values};
use crate::progress::progress_bar;
use crate::data::to_images;
use crate::error::{Error, Result};
use crate::metrics::{column_means, mean_error_to, sample_error_deg, share_within};
use crate::models::init_seeded;
use crate::figures::reversed::{map_figure, reversal_figure};
use crate::models::inference::predict_transformed;

/// ABS settings: TrojanZoo's defaults, with fewer neurons and steps for CPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct AbsConfig {
    /// ABS: clean seed images for stimulation and reverse engineering (TrojanZoo: 5 per class).
    #[arg(id = "abs_seed_images", long = "abs-seed-images", default_value_t = 50)]
    pub seed_images: usize,
    /// ABS: stimulation values per neuron, evenly spaced from 0 to samp_k × its largest activation.
    #[arg(id = "abs_samples", long = "abs-samples", default_value_t = 5)]
    pub samples: usize,
    /// ABS: samp_k, how far beyond its largest seed activation a neuron is driven.
    #[arg(id = "abs_samp_k", long = "abs-samp-k", default_value_t = 8.0)]
    pub samp_k: f64,
    /// ABS: neurons whose triggers are reverse-engineered (TrojanZoo: 20).
    #[arg(id = "abs_top_neurons", long = "abs-top-neurons", default_value_t = 10)]
    pub top_neurons: usize,
    /// ABS: largest trigger, as a share of the image (TrojanZoo: 16 pixels of 32×32).
    #[arg(id = "abs_max_trigger", long = "abs-max-trigger", default_value_t = 0.016)]
    pub max_trigger: f64,
    /// ABS: optimisation steps per neuron (TrojanZoo: 1000 epochs over the seed images).
    #[arg(id = "abs_steps", long = "abs-steps", default_value_t = 200)]
    pub steps: usize,
    /// ABS: Adam learning rate of the mask and pattern.
    #[arg(id = "abs_lr", long = "abs-lr", default_value_t = 0.1)]
    pub lr: f64,
    /// ABS: weight of the mask-size penalty once the mask exceeds its bound.
    #[arg(id = "abs_remask_weight", long = "abs-remask-weight", default_value_t = 500.0)]
    pub remask_weight: f64,
    /// ABS: a stamped image counts as collapsed when its output is within this error (degrees)
    /// of the stamped outputs' mean.
    #[arg(id = "abs_tolerance_deg", long = "abs-tolerance-deg", default_value_t = 5.0)]
    pub tolerance_deg: f64,
    /// ABS: flag the model when the best REASR reaches this share.
    #[arg(id = "abs_threshold", long = "abs-threshold", default_value_t = 0.9)]
    pub threshold: f64,
}

impl Default for AbsConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl AbsConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = self.seed_images >= 2
            && self.samples >= 2
            && self.samp_k > 0.0
            && self.top_neurons >= 1
            && self.max_trigger > 0.0
            && self.max_trigger <= 1.0
            && self.steps >= 1
            && self.lr > 0.0
            && self.remask_weight >= 0.0
            && self.tolerance_deg > 0.0
            && self.threshold > 0.0
            && self.threshold <= 1.0
            && [self.samp_k, self.lr, self.remask_weight, self.tolerance_deg].iter().all(|v| v.is_finite());
        if !ok {
            return Err(Error::invalid("ABS settings", format!("{self:?}")));
        }
        Ok(())
    }
}

/// The stimulation result of one neuron.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stimulation {
    pub neuron: usize,
    /// Best over the stimulation values of (mean output change − spread of the stimulated
    /// outputs), degrees.
    pub elevation_deg: f64,
    /// The stimulation value that achieved it.
    pub value: f32,
}

/// The trigger reverse-engineered for one candidate neuron.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    pub neuron: usize,
    pub elevation_deg: f64,
    /// Share of the clean set collapsed onto one output by the stamped trigger.
    pub reasr: f64,
    pub mask_share: f64,
    /// Mean of the stamped outputs (radians).
    pub output_mean: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Abs {
    pub config: AbsConfig,
}

impl Abs {
    /// Stimulation analysis of every neuron of the model's inner layer on `seed` images; sorted
    /// from the most elevating neuron down.
    pub fn stimulate(&self, suspect: &Suspect, seed: Tensor<4>) -> Result<Vec<Stimulation>> {
        let c = &self.config;
        let model = &suspect.model;
        let task = suspect.task;
        let h = model.inner(seed);
        let [n, channels, hh, ww] = h.dims();
        let base = values(model.forward_inner(h.clone()))?;
        let d = base.len() / n;
        let largest = values(h.clone().max())?[0].max(1e-6) as f64;
        let levels: Vec<f32> = (0..c.samples).map(|i| (i as f64 * c.samp_k * largest / (c.samples - 1) as f64) as f32).collect();
        let device = h.device();
        let mut out = Vec::with_capacity(channels);
        for neuron in 0..channels {
            // One batch of n × samples: each seed image with the neuron held at each level.
            let mut onehot = vec![0.0f32; channels];
            onehot[neuron] = 1.0;
            let select = Tensor::<1>::from_floats(onehot.as_slice(), &device).reshape([1, channels, 1, 1]);
            let keep = select.clone().neg() + 1.0;
            let stimulated: Vec<Tensor<4>> = levels
                .iter()
                .map(|&v| h.clone() * keep.clone() + select.clone().expand([n, channels, hh, ww]) * v)
                .collect();
            let y = values(model.forward_inner(Tensor::cat(stimulated, 0)))?;
            let mut best = Stimulation { neuron, elevation_deg: f64::NEG_INFINITY, value: 0.0 };
            for (level, rows) in levels.iter().zip(y.chunks_exact(n * d)) {
                let moved = rows.chunks_exact(d).zip(base.chunks_exact(d)).map(|(a, b)| sample_error_deg(task, a, b)).sum::<f64>() / n as f64;
                let mean: Vec<f32> = column_means(rows, d);
                let elevation = moved - mean_error_to(task, rows, &mean);
                if elevation > best.elevation_deg {
                    best = Stimulation { neuron, elevation_deg: elevation, value: *level };
                }
            }
            out.push(best);
        }
        out.sort_by(|a, b| b.elevation_deg.total_cmp(&a.elevation_deg).then(a.neuron.cmp(&b.neuron)));
        Ok(out)
    }

    /// Reverse-engineers a trigger that maximises `neuron` (and not the others) on the seed
    /// images, under the mask-size bound.
    pub fn reverse_neuron(&self, suspect: &Suspect, seed_images: Tensor<4>, neuron: usize, seed: u64, device: &Device) -> Result<MaskTrigger> {
        let c = &self.config;
        let ad = device.clone().autodiff();
        let model = suspect.model.clone().fork(&ad).freeze();
        let x = seed_images.to_device(&ad);
        let side = suspect.image_size() as usize;
        let mut trigger = init_seeded(&ad, seed ^ neuron as u64, || MaskTrigger::random(side, 1, &ad));
        let mut optim = AdamConfig::new().with_beta_1(0.5).with_beta_2(0.9).init();
        for step in 0..c.steps {
            let h = model.inner(trigger.stamp(x.clone()));
            let channels = h.dims()[1];
            let per_channel = h.mean_dim(3).mean_dim(2).mean_dim(0).reshape([channels]);
            let target = per_channel.clone().slice([neuron..neuron + 1]).sum();
            let others = (per_channel.sum() - target.clone()) / (channels.max(2) - 1) as f64;
            let share = trigger.mask_share();
            let share_value = share.clone().into_scalar::<f32>() as f64;
            let mut loss = target.neg() + others * 1e-4;
            if share_value > c.max_trigger {
                loss = loss + share * c.remask_weight;
            }
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(Error::Numerical(format!("ABS's loss became {value} at step {step} for neuron {neuron}")));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &trigger);
            trigger = optim.step(c.lr, trigger, grads);
        }
        Ok(trigger.valid())
    }
}

impl Detector for Abs {
    fn name(&self) -> &'static str {
        "abs"
    }

    fn detect(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Finding> {
        let c = &self.config;
        c.validate()?;
        let started = Instant::now();
        let n_seed = c.seed_images.min(clean.len());
        clean.check_for(suspect, n_seed.max(2))?;
        let seed_indices: Vec<usize> = (0..n_seed).collect();
        let (seed_images, _) = clean.batch(&seed_indices, device);
        let stimulation = self.stimulate(suspect, seed_images.clone())?;
        let bar = progress_bar("abs", c.top_neurons.min(stimulation.len()));
        let mut candidates = Vec::new();
        let mut triggers = Vec::new();
        for s in stimulation.iter().take(c.top_neurons) {
            let trigger = self.reverse_neuron(suspect, seed_images.clone(), s.neuron, seed, device)?;
            let stamp = |x: Tensor<4>| trigger.stamp(x);
            let outputs = predict_transformed(&suspect.model, clean.data(), 64, &stamp)?;
            let d = suspect.spec.outputs;
            let mean: Vec<f32> = column_means(&outputs, d);
            let reasr = share_within(suspect.task, &outputs, &mean, c.tolerance_deg);
            let mask_share = trigger.mask_share().into_scalar::<f32>() as f64;
            tracing::info!(neuron = s.neuron, elevation = s.elevation_deg, reasr, mask_share, "abs: candidate");
            candidates.push(Candidate { neuron: s.neuron, elevation_deg: s.elevation_deg, reasr, mask_share, output_mean: mean });
            triggers.push(trigger);
            bar.inc(1);
        }
        bar.finish_and_clear();
        // The first of the best, so that ties go to the more elevating neuron.
        let best_index = (0..candidates.len())
            .reduce(|a, b| if candidates[b].reasr > candidates[a].reasr { b } else { a })
            .ok_or_else(|| Error::Data("ABS found no neuron to stimulate".into()))?;
        let trigger = &triggers[best_index];
        let top = &candidates[best_index];
        let details = serde_json::json!({
            "reasr": top.reasr,
            "neuron": top.neuron,
            "mask_share": top.mask_share,
            "estimated_target": top.output_mean,
            "estimated_target_deg": top.output_mean.iter().map(|&v| suspect.task.to_unit(v)).collect::<Vec<_>>(),
            "candidates": candidates,
            "stimulation": stimulation,
        });
        let detection = Detection::decide("abs", top.reasr, c.threshold, false, started.elapsed().as_secs_f64(), details);

        let shown: Vec<usize> = (0..clean.len().min(8)).collect();
        let (x, _) = clean.batch(&shown, device);
        let figures = vec![
            Figure {
                file: "reversed.png".into(),
                caption: format!("Rows: clean images, the same stamped with the trigger reversed for neuron {}, and the difference (white = 0.5).", top.neuron),
                image: reversal_figure(&to_images(x.clone())?, &to_images(trigger.stamp(x))?, 0.5)?,
            },
            Figure { file: "mask.png".into(), caption: "The reversed mask of the best candidate (white = 1).".into(), image: map_figure(&trigger.mask_values()?, suspect.image_size())? },
        ];
        let rows = vec![
            ("best candidate".into(), format!("neuron {} (elevation {:.2}°), REASR {:.3}, mask share {:.4}", top.neuron, top.elevation_deg, top.reasr, top.mask_share)),
            ("neurons stimulated / reversed".into(), format!("{} / {}", stimulation.len(), candidates.len())),
        ];
        Ok(Finding {
            detection,
            config: serde_json::to_value(c).map_err(|e| Error::Numerical(e.to_string()))?,
            seed,
            rule: "score = REASR, the share of clean images the best reversed trigger collapses onto one output; backdoored iff score ≥ threshold".into(),
            rows,
            figures,
            trigger: Some(std::sync::Arc::new(trigger.clone())),
        })
    }
}
