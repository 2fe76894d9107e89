//! The optimisation: one generator trained against the frozen suspect, and what its edit does
//! on the whole clean set.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};

use super::stats::{SetStats, angle_and_output_stats, saliency};
use super::{DrmGuardParams, FeatureReg, Mtr, Reversal, ReversalSummary, StepRecord};
use crate::models::generator::Generator;
use crate::defenses::references::{References, contrast_penalty, frozen_on, spread_ratios};
use crate::defenses::{BatchCursor, CleanSet, Suspect, scalar};
use crate::progress::progress_bar;
use crate::error::{Error, Result};
use crate::models::{Model, Regressor, feature_angles, init_seeded};

/// How much I(f) must fall over a round of extra steps for another round: a found trigger's edit
/// sheds what the collapse does not need fast (rounds of 10–39% on the backdoored models that
/// gained a verdict from them), a benign model's collapse gives ground slowly (5–8% a round on
/// the one 32×32 benign model that collapsed under κ with I(f) above ε; docs/drmguard.md).
pub(super) const MIN_FALL_PER_ROUND: f64 = 0.09;

/// One generator's optimisation against the frozen suspect: what each step reads, G, its
/// optimiser and the momentum attention map.
struct Optimisation<'a> {
    config: &'a DrmGuardParams,
    /// The suspect, frozen on the autodiff device: no parameter gradients, BatchNorm on its
    /// running statistics; gradients still flow through it to the images.
    model: Model,
    /// The references of the contrast penalty, frozen likewise (none without the penalty).
    references: Option<Vec<Model>>,
    head_weight: Tensor<2>,
    /// The clean set's angle variance per output, `[1, outputs]` (RAV's denominator).
    angle_var_clean: Tensor<2>,
    generator: Generator,
    optim: ModuleOptimizer,
    attention: Option<Tensor<2>>,
    /// The suspect is a classifier: the variance term reads its softmax probabilities.
    probabilities: bool,
}

impl<'a> Optimisation<'a> {
    fn new(config: &'a DrmGuardParams, suspect: &Suspect, clean_stats: &SetStats, references: Option<&References>, seed: u64, ad: &Device) -> Self {
        let model = suspect.model.clone().fork(ad).freeze();
        let references = references.filter(|_| config.contrast_weight > 0.0).map(|r| frozen_on(r, ad));
        let head_weight = model.head_weight().detach();
        let angle_var_clean = Tensor::<1>::from_floats(clean_stats.angle_var.iter().map(|&v| v.max(1e-12) as f32).collect::<Vec<_>>().as_slice(), ad).reshape([1, -1]);
        let generator = init_seeded(ad, seed, || {
            if config.coordinates {
                Generator::with_coordinates(config.generator, config.generator_width, config.residual(), ad)
            } else {
                Generator::new(config.generator, config.generator_width, config.residual(), ad)
            }
        });
        Optimisation { config, model, references, head_weight, angle_var_clean, generator, optim: AdamConfig::new().init(), attention: None, probabilities: suspect.task.is_classification() }
    }

    fn update(&mut self, loss: Tensor<1>) {
        let grads = GradientsParams::from_grads(loss.backward(), &self.generator);
        self.generator = self.optim.step(self.config.lr, self.generator.clone(), grads);
    }

    /// One step of pure reconstruction (L1 only) on batch `x`; its L1.
    fn warm_up(&mut self, x: Tensor<4>) -> Tensor<1> {
        let l1 = (self.generator.forward(x.clone()) - x).abs().mean();
        self.update(l1.clone());
        l1
    }

    /// One step of the full objective on batch `x`: the MTR's attention map moves and G takes
    /// its step; with `record`, the step's terms come back (read from the device only then).
    fn step(&mut self, x: Tensor<4>, step: usize, record: bool) -> Result<Option<StepRecord>> {
        let c = self.config;
        let pixel_weight = match c.mtr {
            Mtr::Off => None,
            mode => {
                let saliency = saliency(&self.model, x.clone())?;
                let m = match self.attention.take() {
                    None => saliency,
                    Some(m) => m * c.mtr_beta + saliency * (1.0 - c.mtr_beta),
                };
                self.attention = Some(m.clone());
                let [h, w] = m.dims();
                let w4 = (m * c.mtr_gamma + 1.0).reshape([1, 1, h, w]);
                Some((mode, w4))
            }
        };

        let reversed = self.generator.forward(x.clone());
        let into_model = match &pixel_weight {
            // Same values, but the gradient reaching G is scaled by 1 / (1 + γ·M).
            Some((Mtr::Gradient, w)) => {
                let scale = w.clone().recip();
                reversed.clone() * scale.clone() + reversed.clone().detach() * (scale.neg() + 1.0)
            }
            _ => reversed.clone(),
        };
        let z = self.model.features(into_model);
        let y = self.model.head(z.clone());
        // A classifier's outputs are logits: the authors' classification objective takes the
        // variance of its probability vectors, which a trigger makes near-identical.
        let y = if self.probabilities { burn::tensor::activation::softmax(y, 1) } else { y };
        let output_variance = y.var_bias(0).mean();
        let contrast = self.references.as_ref().map(|refs| contrast_penalty(refs, x.clone(), reversed.clone(), c.contrast_floor));
        let diff = (reversed - x).abs();
        let l1 = diff.clone().mean();
        let similarity = match &pixel_weight {
            Some((Mtr::Loss, w)) => (diff * w.clone()).mean(),
            _ => l1.clone(),
        };
        let mut loss = output_variance.clone() * c.lambda1 + similarity.clone();
        let feature_term = match c.feature_reg {
            FeatureReg::Off => None,
            reg => {
                let var = feature_angles(z, self.head_weight.clone()).var_bias(0);
                let var = if reg == FeatureReg::Rav { var / self.angle_var_clean.clone() } else { var };
                Some(var.mean())
            }
        };
        if let Some(term) = &feature_term {
            loss = loss + term.clone() * c.lambda2;
        }
        if let Some(term) = &contrast {
            loss = loss + term.clone() * c.contrast_weight;
        }
        let loss_value = scalar(loss.clone());
        if !loss_value.is_finite() {
            return Err(Error::Numerical(format!(
                "DRMGuard's loss became {loss_value} at step {step} (are the model's outputs finite on the clean set?)"
            )));
        }
        let record = record.then(|| StepRecord {
            step,
            loss: loss_value,
            output_variance: scalar(output_variance),
            similarity: scalar(similarity),
            l1: scalar(l1),
            feature_term: feature_term.map(scalar).unwrap_or(0.0),
            contrast: contrast.map(scalar).unwrap_or(0.0),
        });
        self.update(loss);
        Ok(record)
    }
}

/// One generator from `seed`, under a resolved `config`, against the clean set's statistics
/// (and, with references, against their collapse).
pub(super) fn reverse_once(
    config: &DrmGuardParams,
    suspect: &Suspect,
    clean: &CleanSet,
    clean_stats: &SetStats,
    references: Option<&References>,
    seed: u64,
    device: &Device,
) -> Result<Reversal> {
    let ad = device.clone().autodiff();
    let mut run = Optimisation::new(config, suspect, clean_stats, references, seed, &ad);
    let mut batches = BatchCursor::new(clean.len(), config.batch_size, seed ^ 0x6d72_6775_6172_6421);
    let mut history = Vec::new();
    let log_every = (config.steps / 40).max(1);
    let bar = progress_bar("drmguard", config.warmup_steps + config.steps);
    // The optimisation runs to `planned`, then G is measured on the whole clean set; `planned`
    // grows by a round while a collapse is still shrinking (`extra_steps`).
    let round = (config.steps / 2).max(1);
    let mut planned = config.steps;
    let limit = config.steps.saturating_add(config.extra_steps);
    let started = Instant::now();
    for step in 0..config.warmup_steps {
        let (x, _) = clean.batch(batches.next_batch(), &ad);
        let l1 = run.warm_up(x);
        if step % log_every == 0 {
            bar.set_message(format!("warm-up L1 {:.4}", scalar(l1)));
        }
        bar.inc(1);
    }
    let mut step = 0;
    let mut last_score: Option<f64> = None;
    let mut summary = loop {
        while step < planned {
            let (x, _) = clean.batch(batches.next_batch(), &ad);
            if let Some(record) = run.step(x, step, step % log_every == 0 || step + 1 == planned)? {
                // The bar is hidden when stderr is not a terminal: log a tenth of the way too.
                if step % (log_every * 4) == 0 {
                    tracing::info!(step, l1 = record.l1, output_variance = record.output_variance, feature_term = record.feature_term, "drmguard");
                } else {
                    tracing::debug!(?record, "drmguard step");
                }
                bar.set_message(format!("L1 {:.4}, out var {:.2e}", record.l1, record.output_variance));
                history.push(record);
            }
            bar.inc(1);
            step += 1;
        }
        let inference = run.generator.clone().valid();
        let now = measure(config, suspect, clean, clean_stats, references, &|x| inference.forward(x))?;
        let falling = last_score.is_none_or(|before| now.score < (1.0 - MIN_FALL_PER_ROUND) * before);
        if planned < limit && config.collapsed(&now) && now.score >= config.epsilon && falling {
            let more = round.min(limit - planned);
            tracing::info!(step, score = now.score, error_ratio = now.error_ratio, more, "outputs collapsed, I(f) still above ε and falling: more steps");
            planned += more;
            bar.inc_length(more as u64);
            last_score = Some(now.score);
        } else {
            break now;
        }
    };
    bar.finish_and_clear();
    let seconds_per_step = started.elapsed().as_secs_f64() / (config.warmup_steps + step) as f64;

    summary.steps = step;
    summary.history = history;
    summary.seconds_per_step = seconds_per_step;
    tracing::info!(score = summary.score, rav = summary.rav, steps = step, seconds_per_step, "drmguard reverse engineering done");
    let attention = run.attention.map(|m| m.reshape([-1]).into_data().try_to_vec::<f32>()).transpose().map_err(|e| Error::Numerical(format!("{e:?}")))?;
    Ok(Reversal { generator: run.generator.valid(), summary, config: config.clone(), seed, attention })
}

/// What G does on the whole clean set: I(f), the estimated target and how far the outputs
/// collapsed. `steps`, `history` and `seconds_per_step` are left for the caller.
pub(super) fn measure(
    config: &DrmGuardParams,
    suspect: &Suspect,
    clean: &CleanSet,
    clean_stats: &SetStats,
    references: Option<&References>,
    edit: &dyn Fn(Tensor<4>) -> Tensor<4>,
) -> Result<ReversalSummary> {
    let reversed_stats = angle_and_output_stats(suspect, clean, Some(edit), config.batch_size)?;
    let rav_per_output: Vec<f64> = reversed_stats
        .angle_var
        .iter()
        .zip(&clean_stats.angle_var)
        .map(|(r, c)| r / c.max(1e-12))
        .collect();
    let output_std_deg: Vec<f64> = reversed_stats.output_std.iter().map(|&v| v * suspect.task.units_per_label()).collect();
    let clean_output_std_deg: Vec<f64> = clean_stats.output_std.iter().map(|&v| v * suspect.task.units_per_label()).collect();
    let clean_error_deg: Vec<f64> = clean_stats.output_mae.iter().map(|&v| v * suspect.task.units_per_label()).collect();
    let mean_ratio = |over: &[f64]| output_std_deg.iter().zip(over).map(|(r, c)| r / c.max(1e-9)).sum::<f64>() / output_std_deg.len().max(1) as f64;
    let (spread_ratio, error_ratio) = (mean_ratio(&clean_output_std_deg), mean_ratio(&clean_error_deg));
    let reference_spread_ratios = match references {
        Some(r) => spread_ratios(&r.models, clean, edit, config.batch_size)?,
        None => Vec::new(),
    };
    let contrast = (!reference_spread_ratios.is_empty())
        .then(|| spread_ratio / (reference_spread_ratios.iter().sum::<f64>() / reference_spread_ratios.len() as f64).max(1e-9));
    let total = |v: &[f64]| v.iter().sum::<f64>();
    let feature_dispersion_ratio = total(&reversed_stats.feature_var) / total(&clean_stats.feature_var).max(1e-12);
    let feature_shift = reversed_stats
        .feature_mean
        .iter()
        .zip(&clean_stats.feature_mean)
        .zip(&clean_stats.feature_var)
        .map(|((r, c), v)| (r - c).abs() / v.sqrt().max(1e-6))
        .sum::<f64>()
        / clean_stats.feature_mean.len().max(1) as f64;
    let summary = ReversalSummary {
        score: reversed_stats.l1,
        estimated_target: reversed_stats.output_mean.iter().map(|&v| v as f32).collect(),
        output_std_deg,
        clean_output_std_deg,
        spread_ratio,
        clean_error_deg,
        error_ratio,
        rav: rav_per_output.iter().sum::<f64>() / rav_per_output.len().max(1) as f64,
        rav_per_output,
        feature_dispersion_ratio,
        feature_shift,
        steps: 0,
        history: Vec::new(),
        seconds_per_step: 0.0,
        reference_spread_ratios,
        contrast,
        references: references.map(|r| r.records.clone()).unwrap_or_default(),
        restarts: Vec::new(),
    };
    Ok(summary)
}
