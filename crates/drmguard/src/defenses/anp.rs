//! Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021; method.md §9.4), adapted to regression.
//! Every BatchNorm channel k of F gets a mask m_k ∈ [0, 1] and, during optimisation, adversarial
//! multiplicative noise on its scale and shift: γ_k·(m_k + δ_k), β_k·(1 + ξ_k), δ, ξ ∈ [−ε, ε].
//! Neurons whose mask must stay high to keep the model correct under the worst-case noise are
//! benign; backdoor neurons are the ones the optimisation lets fall, because perturbing them
//! is what hurts most. Channels with m_k at or below a threshold are pruned (γ_k = 0); the
//! threshold is the largest one whose clean error stays within a tolerance, chosen from the clean
//! set alone. The head H has no BatchNorm and is not masked.

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use super::{BatchCursor, CleanSet, Mitigator, Repair, Suspect, values};
use crate::progress::progress_bar;
use crate::error::{Error, Result};
use crate::metrics::task_error;
use crate::models::{Model, Regressor};
use crate::models::inference::predict;

/// ANP settings: the original's (and BackdoorBench's) defaults; fewer steps and a smaller batch
/// for CPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct AnpConfig {
    /// ANP: bound ε of the adversarial neuron noise.
    #[arg(id = "anp_eps", long = "anp-eps", default_value_t = 0.4)]
    pub eps: f64,
    /// ANP: sign-gradient ascent steps of the noise per iteration.
    #[arg(id = "anp_noise_steps", long = "anp-noise-steps", default_value_t = 1)]
    pub noise_steps: usize,
    /// ANP: weight α of the natural loss (1 − α: the loss under noise).
    #[arg(id = "anp_alpha", long = "anp-alpha", default_value_t = 0.2)]
    pub alpha: f64,
    /// ANP: SGD learning rate of the masks (momentum 0.9).
    #[arg(id = "anp_lr", long = "anp-lr", default_value_t = 0.2)]
    pub lr: f64,
    /// ANP: mask optimisation iterations (the original: 2000).
    #[arg(id = "anp_steps", long = "anp-steps", default_value_t = 300)]
    pub steps: usize,
    /// ANP: images per iteration (the original: 128).
    #[arg(id = "anp_batch_size", long = "anp-batch-size", default_value_t = 64)]
    pub batch_size: usize,
    /// ANP: largest pruning threshold tried.
    #[arg(id = "anp_pruning_max", long = "anp-pruning-max", default_value_t = 0.9)]
    pub pruning_max: f64,
    /// ANP: spacing of the thresholds tried.
    #[arg(id = "anp_pruning_step", long = "anp-pruning-step", default_value_t = 0.05)]
    pub pruning_step: f64,
    /// ANP: the chosen threshold is the largest whose clean error rises by at most this share.
    #[arg(id = "anp_max_error_rise", long = "anp-max-error-rise", default_value_t = 0.1)]
    pub max_error_rise: f64,
}

impl Default for AnpConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl AnpConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = self.eps >= 0.0
            && self.eps.is_finite()
            && (0.0..=1.0).contains(&self.alpha)
            && self.lr > 0.0
            && self.lr.is_finite()
            && self.steps > 0
            && self.batch_size >= 1
            && self.pruning_step > 0.0
            && (0.0..1.0).contains(&self.pruning_max)
            && self.max_error_rise >= 0.0
            && self.max_error_rise.is_finite();
        if !ok {
            return Err(Error::invalid("ANP settings", format!("{self:?} (ε ≥ 0, α in [0, 1], lr > 0, steps ≥ 1, 0 < pruning step, max in [0, 1))")));
        }
        Ok(())
    }
}

/// Per-channel masks and noise of every BatchNorm, as plain tensors (one per layer).
struct Perturbation {
    masks: Vec<Tensor<1>>,
    delta: Vec<Tensor<1>>,
    xi: Vec<Tensor<1>>,
}

/// The model's outputs with every BatchNorm perturbed: γ·(m + δ), β·(1 + ξ), on running statistics.
pub(crate) fn perturbed_forward(model: &Model, x: Tensor<4>, masks: &[Tensor<1>], noise: Option<(&[Tensor<1>], &[Tensor<1>])>) -> Tensor<2> {
    let mut layer = 0;
    let mut hook = |bn: &BatchNorm, h: Tensor<4>| {
        let k = layer;
        layer += 1;
        let (mut gamma, mut beta) = (bn.gamma.val() * masks[k].clone(), bn.beta.val());
        if let Some((delta, xi)) = noise {
            gamma = gamma + bn.gamma.val() * delta[k].clone();
            beta = beta * (xi[k].clone() + 1.0);
        }
        burn::tensor::module::batch_norm(h, gamma, beta, bn.running_mean.value(), bn.running_var.value(), bn.epsilon)
    };
    let z = model.features_with(x, &mut hook);
    model.head(z)
}

/// The model's own training loss, mean absolute error in radians. (In degrees, ×57, the
/// original's mask learning rate of 0.2 overshoots: most masks hit 0 within a few steps.)
fn task_loss(y: Tensor<2>, labels: Tensor<2>) -> Tensor<1> {
    (y - labels).abs().mean()
}

/// What the optimisation and the threshold search found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnpResult {
    /// Final mask value of every BatchNorm channel, layer by layer.
    pub masks: Vec<Vec<f32>>,
    pub threshold: f64,
    pub pruned: usize,
    pub channels: usize,
    pub clean_error_before_deg: f64,
    pub clean_error_after_deg: f64,
    /// (threshold, channels pruned, clean error) for every threshold tried.
    pub curve: Vec<(f64, usize, f64)>,
}

#[derive(Debug, Clone)]
pub struct Anp {
    pub config: AnpConfig,
}

impl Anp {
    /// Optimises the masks under adversarial neuron noise; returns them, layer by layer.
    pub fn optimise_masks(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        c.validate()?;
        clean.check_for(suspect, c.batch_size)?;
        let ad = device.clone().autodiff();
        let model = suspect.model.clone().fork(&ad).freeze();
        let sizes: Vec<usize> = model.batch_norms().iter().map(|bn| bn.gamma.dims()[0]).collect();
        let zeros = |n: usize| Tensor::<1>::zeros([n], &ad);
        let mut p = Perturbation {
            masks: sizes.iter().map(|&n| Tensor::<1>::ones([n], &ad).require_grad()).collect(),
            delta: sizes.iter().map(|&n| zeros(n)).collect(),
            xi: sizes.iter().map(|&n| zeros(n)).collect(),
        };
        // Momentum buffers live off the autodiff graph.
        let mut velocity: Vec<Tensor<1>> = sizes.iter().map(|&n| Tensor::<1>::zeros([n], device)).collect();
        let mut batches = BatchCursor::new(clean.len(), c.batch_size, seed ^ 0x616e_705f_6261_7463);
        ad.seed(seed ^ 0x616e_705f_6e6f_6973);
        let bar = progress_bar("anp", c.steps);
        for step in 0..c.steps {
            let (x, y) = clean.batch(batches.next_batch(), &ad);
            if c.eps > 0.0 {
                // Inner maximisation: random start in [−ε, ε], then sign-gradient ascent on the loss.
                let noise = |n: usize| Tensor::<1>::random([n], Distribution::Uniform(-c.eps, c.eps), &ad).require_grad();
                p.delta = sizes.iter().map(|&n| noise(n)).collect();
                p.xi = sizes.iter().map(|&n| noise(n)).collect();
                let masks: Vec<Tensor<1>> = p.masks.iter().map(|m| m.clone().detach()).collect();
                for _ in 0..c.noise_steps {
                    let loss = task_loss(perturbed_forward(&model, x.clone(), &masks, Some((&p.delta, &p.xi))), y.clone());
                    let grads = loss.backward();
                    let ascend = |t: &Tensor<1>| -> Result<Tensor<1>> {
                        let g = t.grad(&grads).ok_or_else(|| Error::Numerical("ANP: no gradient for the neuron noise".into()))?;
                        let moved = t.clone().inner() + g.sign() * (c.eps / c.noise_steps as f64);
                        Ok(moved.clamp(-c.eps, c.eps).autodiff().require_grad())
                    };
                    p.delta = p.delta.iter().map(ascend).collect::<Result<_>>()?;
                    p.xi = p.xi.iter().map(ascend).collect::<Result<_>>()?;
                }
            }
            // Outer minimisation over the masks: α · natural loss + (1 − α) · loss under the noise.
            let natural = task_loss(perturbed_forward(&model, x.clone(), &p.masks, None), y.clone());
            let mut loss = natural.clone() * c.alpha;
            if c.eps > 0.0 {
                let delta: Vec<Tensor<1>> = p.delta.iter().map(|t| t.clone().detach()).collect();
                let xi: Vec<Tensor<1>> = p.xi.iter().map(|t| t.clone().detach()).collect();
                let robust = task_loss(perturbed_forward(&model, x, &p.masks, Some((&delta, &xi))), y);
                loss = loss + robust * (1.0 - c.alpha);
            }
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(Error::Numerical(format!("ANP's loss became {value} at step {step}")));
            }
            let grads = loss.backward();
            let mut next = Vec::with_capacity(p.masks.len());
            for (m, v) in p.masks.iter().zip(velocity.iter_mut()) {
                let g = m.grad(&grads).ok_or_else(|| Error::Numerical("ANP: no gradient for a neuron mask".into()))?;
                // SGD with momentum 0.9 (no dampening, as PyTorch's), then projection onto [0, 1].
                *v = v.clone() * 0.9 + g;
                let moved = m.clone().inner() - v.clone() * c.lr;
                next.push(moved.clamp(0.0, 1.0).autodiff().require_grad());
            }
            p.masks = next;
            if step % 20 == 0 {
                bar.set_message(format!("loss {value:.3}"));
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        p.masks.into_iter().map(|m| values(m.inner())).collect()
    }

    /// Chooses the pruning threshold from the clean error alone and prunes.
    pub fn prune(&self, suspect: &Suspect, clean: &CleanSet, masks: Vec<Vec<f32>>) -> Result<(Model, AnpResult)> {
        let c = &self.config;
        let error = |model: &Model| -> Result<f64> {
            Ok(task_error(suspect.task, &predict(model, clean.data(), c.batch_size)?, &clean.data().labels).mean_deg)
        };
        let before = error(&suspect.model)?;
        let limit = before * (1.0 + c.max_error_rise);
        let channels = masks.iter().map(Vec::len).sum();
        let mut chosen = (0.0, 0, before, suspect.model.clone());
        let mut curve = Vec::new();
        let mut threshold = c.pruning_step;
        while threshold <= c.pruning_max + 1e-9 {
            let pruned = masks.iter().flatten().filter(|&&m| (m as f64) < threshold).count();
            let model = prune_channels(&suspect.model, &masks, threshold);
            let e = error(&model)?;
            curve.push((threshold, pruned, e));
            if e > limit {
                break;
            }
            chosen = (threshold, pruned, e, model);
            threshold += c.pruning_step;
        }
        let (threshold, pruned, after, model) = chosen;
        tracing::info!(threshold, pruned, channels, before, after, "ANP: pruned");
        Ok((model, AnpResult { masks, threshold, pruned, channels, clean_error_before_deg: before, clean_error_after_deg: after, curve }))
    }
}

/// The model with the BatchNorm scale γ_k set to zero wherever the mask is at most `threshold`
/// (the original prunes the scale only).
pub fn prune_channels(model: &Model, masks: &[Vec<f32>], threshold: f64) -> Model {
    model.clone().map_batch_norms(|layer, mut bn| {
        let keep: Vec<f32> = masks[layer].iter().map(|&m| if (m as f64) < threshold { 0.0 } else { 1.0 }).collect();
        bn.gamma = bn.gamma.map(|g| {
            let device = g.device();
            g * Tensor::<1>::from_floats(keep.as_slice(), &device)
        });
        bn
    })
}

impl Mitigator for Anp {
    fn name(&self) -> &'static str {
        "anp"
    }

    fn mitigate(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Repair> {
        if suspect.model.batch_norms().is_empty() {
            return Err(Error::Data(
                "ANP perturbs and prunes BatchNorm neurons, and this model has none (an ONNX export folds BatchNorm into the convolutions)".into(),
            ));
        }
        let masks = self.optimise_masks(suspect, clean, seed, device)?;
        let (model, result) = self.prune(suspect, clean, masks)?;
        let record = serde_json::json!({
            "defense": "anp",
            "config": self.config,
            "seed": seed,
            "threshold": result.threshold,
            "pruned_channels": result.pruned,
            "channels": result.channels,
            "clean_error_before_deg": result.clean_error_before_deg,
            "clean_error_after_deg": result.clean_error_after_deg,
            "threshold_curve": result.curve,
            "masks": result.masks,
        });
        Ok(Repair { model, record })
    }
}
