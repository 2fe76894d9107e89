//! Parameter-space collapse (after BAN, Xu et al., NeurIPS 2024), adapted to regression: bounded
//! adversarial noise on every BatchNorm channel's scale and shift, γ·(1 + δ) and β·(1 + ξ) with
//! δ, ξ ∈ [−ε, ε], chosen by projected sign-gradient descent to collapse the outputs on clean
//! images. A backdoor is a shortcut to one output that the weights already hold: a small push on
//! its neurons activates it on every image. A benign model has no such shortcut, and noise of the
//! same size only blurs its outputs. The score is the spread ratio the noise reaches (the spread
//! of the outputs under it over their spread on the clean images; small = suspicious).
//!
//! The test reads weights, not images, so it is blind to the natural features of a task that
//! confuse input-space reversals (a gaze model's eyes). With reference models trained from the
//! clean set, the same noise search runs on each of them, and the report gives the suspect's
//! ratio over theirs.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use super::anp::perturbed_forward;
use super::references::{ReferenceConfig, References, reference_seed};
use super::{BatchCursor, CleanSet, Detection, Detector, Finding, Suspect, values};
use crate::progress::progress_bar;
use crate::error::{Error, Result};
use crate::metrics::column_mean_var;
use crate::models::{Model, Regressor};
use crate::models::inference::model_device;

/// Neuron-noise settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct NeuronNoiseConfig {
    /// Neuron noise: bound ε of the multiplicative noise on each BatchNorm channel's scale and
    /// shift (at 0.3 it collapses benign 64×64 gaze models as far as backdoored ones).
    #[arg(id = "noise_eps", long = "noise-eps", default_value_t = 0.1)]
    pub eps: f64,
    /// Neuron noise: projected sign-gradient steps (each moves the noise by ε / 10).
    #[arg(id = "noise_steps", long = "noise-steps", default_value_t = 60)]
    pub steps: usize,
    /// Neuron noise: clean images per step.
    #[arg(id = "noise_batch_size", long = "noise-batch-size", default_value_t = 64)]
    pub batch_size: usize,
    /// Neuron noise: flag the model when the noise collapses its outputs below this spread ratio.
    #[arg(id = "noise_threshold", long = "noise-threshold", default_value_t = 0.3)]
    pub threshold: f64,
    /// Neuron noise: benign reference models trained from the clean set alone (shared with the
    /// other detectors), searched the same way. 0: none.
    #[arg(id = "noise_references", long = "noise-references", default_value_t = 0)]
    pub references: usize,
}

impl Default for NeuronNoiseConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl NeuronNoiseConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.eps > 0.0 && self.eps <= 1.0) || self.steps == 0 || self.batch_size < 2 || !(self.threshold > 0.0 && self.threshold.is_finite()) {
            return Err(Error::invalid(
                "neuron-noise settings",
                format!("ε {}, {} steps, batch {}, threshold {} (ε in (0, 1], at least one step, batch ≥ 2, threshold > 0)", self.eps, self.steps, self.batch_size, self.threshold),
            ));
        }
        Ok(())
    }
}

/// What the noise search found on one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseCollapse {
    /// Spread of the outputs under the noise over their spread on the clean images, mean over
    /// outputs, on the whole clean set.
    pub spread_ratio: f64,
    /// Mean output under the noise (radians; the backdoor's target, when there is one).
    pub target: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct NeuronNoise {
    pub config: NeuronNoiseConfig,
}

impl NeuronNoise {
    /// The noise search on `model`, from `seed`.
    pub fn collapse(&self, model: &Model, clean: &CleanSet, seed: u64, device: &Device) -> Result<NoiseCollapse> {
        let c = &self.config;
        if model.batch_norms().is_empty() {
            return Err(Error::Data(
                "neuron noise perturbs BatchNorm channels, and this model has none (an ONNX export folds BatchNorm into the convolutions)".into(),
            ));
        }
        let clean_std = output_std(model, clean, None, c.batch_size)?;
        let ad = device.clone().autodiff();
        let frozen = model.clone().fork(&ad).freeze();
        let sizes: Vec<usize> = frozen.batch_norms().iter().map(|bn| bn.gamma.dims()[0]).collect();
        let ones: Vec<Tensor<1>> = sizes.iter().map(|&n| Tensor::<1>::ones([n], &ad)).collect();
        ad.seed(seed ^ 0x6e6f_6973_655f_7374);
        let start = |n: usize| Tensor::<1>::random([n], Distribution::Uniform(-c.eps, c.eps), &ad).require_grad();
        let (mut delta, mut xi): (Vec<Tensor<1>>, Vec<Tensor<1>>) = (sizes.iter().map(|&n| start(n)).collect(), sizes.iter().map(|&n| start(n)).collect());
        let scale = Tensor::<1>::from_floats(clean_std.iter().map(|&s| 1.0 / s.max(1e-9) as f32).collect::<Vec<_>>().as_slice(), &ad).reshape([1, -1]);
        let mut batches = BatchCursor::new(clean.len(), c.batch_size, seed ^ 0x6e6f_6973_655f_6261);
        let bar = progress_bar("neuron noise", c.steps);
        for step in 0..c.steps {
            let (x, _) = clean.batch(batches.next_batch(), &ad);
            let y = perturbed_forward(&frozen, x, &ones, Some((&delta, &xi))) * scale.clone();
            let loss = (y.var_bias(0) + 1e-12).sqrt().mean();
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(Error::Numerical(format!("the neuron-noise loss became {value} at step {step}")));
            }
            let grads = loss.backward();
            let descend = |t: &Tensor<1>| -> Result<Tensor<1>> {
                let g = t.grad(&grads).ok_or_else(|| Error::Numerical("neuron noise: no gradient for the noise".into()))?;
                Ok((t.clone().inner() - g.sign() * (c.eps / 10.0)).clamp(-c.eps, c.eps).autodiff().require_grad())
            };
            delta = delta.iter().map(descend).collect::<Result<_>>()?;
            xi = xi.iter().map(descend).collect::<Result<_>>()?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let delta: Vec<Tensor<1>> = delta.into_iter().map(|t| t.inner()).collect();
        let xi: Vec<Tensor<1>> = xi.into_iter().map(|t| t.inner()).collect();
        let ones: Vec<Tensor<1>> = sizes.iter().map(|&n| Tensor::<1>::ones([n], device)).collect();
        let noisy = |x: Tensor<4>| perturbed_forward(model, x, &ones, Some((&delta, &xi)));
        let (noisy_std, target) = output_stats(model, clean, Some(&noisy), c.batch_size)?;
        let spread_ratio = noisy_std.iter().zip(&clean_std).map(|(a, b)| a / b.max(1e-9)).sum::<f64>() / clean_std.len().max(1) as f64;
        Ok(NoiseCollapse { spread_ratio, target })
    }
}

/// The standard deviation of each output over the clean set.
fn output_std(model: &Model, clean: &CleanSet, forward: Option<&dyn Fn(Tensor<4>) -> Tensor<2>>, batch_size: usize) -> Result<Vec<f64>> {
    Ok(output_stats(model, clean, forward, batch_size)?.0)
}

/// Each output's standard deviation and mean over the clean set, through `forward` (default:
/// the model's own).
pub(super) fn output_stats(model: &Model, clean: &CleanSet, forward: Option<&dyn Fn(Tensor<4>) -> Tensor<2>>, batch_size: usize) -> Result<(Vec<f64>, Vec<f32>)> {
    let device = model_device(model);
    let indices: Vec<usize> = (0..clean.len()).collect();
    let mut outputs = Vec::new();
    for batch in indices.chunks(batch_size.max(1)) {
        let (x, _) = clean.batch(batch, &device);
        outputs.extend(values(match forward {
            Some(f) => f(x),
            None => model.forward(x),
        })?);
    }
    let d = model.head_weight().dims()[0];
    let (mean, var) = column_mean_var(&outputs, d);
    Ok((var.iter().map(|v| v.sqrt()).collect(), mean.iter().map(|&m| m as f32).collect()))
}

/// A collapse search run again on `count` reference models trained from the clean set, for the
/// contrast of the suspect's spread ratio against theirs.
pub(super) struct ReferenceSearch<'a> {
    pub count: usize,
    /// The search's name in the report row.
    pub search: &'static str,
    pub suspect: &'a Suspect,
    pub clean: &'a CleanSet,
    pub seed: u64,
    pub device: &'a Device,
}

impl ReferenceSearch<'_> {
    /// The references' spread ratios by `ratio_of` (none when `count` is 0), with their mean and
    /// the suspect's `own` ratio over it added to `signals` and a row to `rows`.
    pub fn contrast(&self, own: f64, signals: &mut Vec<(&'static str, f64)>, rows: &mut Vec<(String, String)>, ratio_of: impl Fn(&Model) -> Result<f64>) -> Result<Vec<f64>> {
        if self.count == 0 {
            return Ok(Vec::new());
        }
        let references = References::get(self.suspect, self.clean, &ReferenceConfig::new(self.count), reference_seed(self.seed), self.device)?;
        let theirs = references.models.iter().map(ratio_of).collect::<Result<Vec<f64>>>()?;
        let mean = theirs.iter().sum::<f64>() / theirs.len().max(1) as f64;
        let contrast = own / mean.max(1e-9);
        signals.extend([("reference_spread_ratio", mean), ("contrast", contrast)]);
        rows.push((
            format!("the same {} search on {} references trained from the clean set", self.search, theirs.len()),
            format!("{} (contrast {contrast:.3}: far below 1, the suspect collapses where benign models of its task do not)", theirs.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(", ")),
        ));
        Ok(theirs)
    }
}

impl Detector for NeuronNoise {
    fn name(&self) -> &'static str {
        "noise"
    }

    fn detect(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Finding> {
        let c = &self.config;
        c.validate()?;
        clean.check_for(suspect, c.batch_size)?;
        let started = Instant::now();
        let own = self.collapse(&suspect.model, clean, seed, device)?;
        let mut signals = vec![("score", own.spread_ratio), ("spread_ratio", own.spread_ratio)];
        let mut rows = vec![
            ("noise bound ε on every BatchNorm channel's scale and shift".into(), format!("{} ({} steps)", c.eps, c.steps)),
            ("spread ratio of the outputs under the noise".into(), format!("{:.3}", own.spread_ratio)),
            ("mean output under the noise".into(), suspect.task.format_values(&own.target)),
        ];
        let reference = ReferenceSearch { count: c.references, search: "noise", suspect, clean, seed, device };
        let theirs = reference.contrast(own.spread_ratio, &mut signals, &mut rows, |model| Ok(self.collapse(model, clean, seed, device)?.spread_ratio))?;
        let details = serde_json::json!({
            "spread_ratio": own.spread_ratio,
            "target": own.target,
            "reference_spread_ratios": theirs,
        });
        let mut detection = Detection::decide("noise", own.spread_ratio, c.threshold, true, started.elapsed().as_secs_f64(), details);
        detection.set_signals(signals);
        Ok(Finding {
            detection,
            config: serde_json::to_value(c).map_err(|e| Error::Numerical(e.to_string()))?,
            seed,
            rule: "score = spread ratio of the outputs under the worst bounded BatchNorm noise; backdoored iff score < threshold".into(),
            rows,
            figures: Vec::new(),
            trigger: None,
        })
    }
}
