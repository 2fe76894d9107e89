//! Neural Cleanse (Wang et al., S&P 2019; method.md §9.1), adapted to regression: the label loop
//! disappears and the target vector y_t becomes an optimisation variable. A mask m, a pattern p
//! and y_t are optimised jointly so that stamped images x' = (1 − m) ⊙ x + m ⊙ p reach y_t,
//! with NC's cost schedule on the mask's L1 norm. A backdoored model needs only a small mask:
//! the score is the share of the image the best successful mask covers (small = suspicious; 1
//! when no mask succeeded).
//!
//! Mitigation (`--defense nc`) unlearns the reversed trigger: fine-tuning on the clean set plus
//! stamped copies of a share of it, with their true labels (BackdoorBench's recipe).

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::references::{ReferenceConfig, References, contrast_of, frozen_on, reference_seed};
use super::trigger::{FreeTarget, MaskTrigger};
use super::unlearn::{NC_UNLEARN_RATIO, UnlearnConfig, unlearn};
use super::{BatchCursor, CleanSet, Detection, Detector, Figure, Finding, Mitigator, Repair, Suspect, progress_bar, values};
use crate::error::{Error, Result};
use crate::metrics::{mean_error_to, share_within};
use crate::models::{Model, Regressor, init_seeded};
use crate::report::reversed::{map_figure, reversal_figure};

/// Neural Cleanse settings: the original's optimiser and cost schedule; steps, success and
/// threshold adapted to regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct NeuralCleanseConfig {
    /// NC: optimisation steps at most (mini-batches; the original runs up to 1000 epochs).
    #[arg(id = "nc_steps", long = "nc-steps", default_value_t = 600)]
    pub steps: usize,
    /// NC: mini-batches per epoch, after which the cost is adjusted (the original: 1000 samples / 32).
    #[arg(id = "nc_epoch_steps", long = "nc-epoch-steps", default_value_t = 10)]
    pub epoch_steps: usize,
    /// NC: images per step.
    #[arg(id = "nc_batch_size", long = "nc-batch-size", default_value_t = 32)]
    pub batch_size: usize,
    /// NC: Adam learning rate of the mask and pattern (β = 0.5, 0.9).
    #[arg(id = "nc_lr", long = "nc-lr", default_value_t = 0.1)]
    pub lr: f64,
    /// NC: Adam learning rate of the free target vector (radians).
    #[arg(id = "nc_target_lr", long = "nc-target-lr", default_value_t = 0.01)]
    pub target_lr: f64,
    /// NC: initial cost of the mask's L1 norm, set once the trigger first succeeds.
    #[arg(id = "nc_init_cost", long = "nc-init-cost", default_value_t = 1e-3)]
    pub init_cost: f64,
    /// NC: epochs of (un)success before the cost moves.
    #[arg(id = "nc_patience", long = "nc-patience", default_value_t = 5)]
    pub patience: usize,
    /// NC: cost multiplier up (down: its 1.5th power).
    #[arg(id = "nc_cost_multiplier", long = "nc-cost-multiplier", default_value_t = 2.0)]
    pub cost_multiplier: f64,
    /// NC: a stamped image "reaches" y_t when its output is within this error (degrees).
    #[arg(id = "nc_tolerance_deg", long = "nc-tolerance-deg", default_value_t = 5.0)]
    pub tolerance_deg: f64,
    /// NC: share of stamped images that must reach y_t for the trigger to succeed (the
    /// original's 0.99 assumes a classifier's exact hits).
    #[arg(id = "nc_success", long = "nc-success", default_value_t = 0.9)]
    pub success: f64,
    /// NC: flag the model when the best successful mask covers less than this share of the image
    /// (measured: 0.019 on a small BadNets gaze model, whose patch covers 1/64 = 0.016; 0.031 on
    /// its benign twin).
    #[arg(id = "nc_threshold", long = "nc-threshold", default_value_t = 0.025)]
    pub threshold: f64,
    /// NC: benign reference models trained from the clean set alone (as DRMGuard's
    /// `--references`, and shared with it); with them, the report adds how far the reversed
    /// trigger collapses the suspect and the references (the contrast). 0: none.
    #[arg(id = "nc_references", long = "nc-references", default_value_t = 0)]
    // Left out at 0, so that configs (and the benchmark's cache keys) from before the option
    // read and hash as they did.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub references: usize,
    /// NC: weight of the neutrality term, which asks the stamped images to keep the references'
    /// outputs where the clean images put them (mean absolute change, in degrees). A trigger is
    /// neutral to a model that never learned it; a natural feature of the task (a gaze model's
    /// eyes) moves every model of the task, so the search must look elsewhere. Needs
    /// `--nc-references`. 0: the original objective.
    #[arg(id = "nc_neutral_weight", long = "nc-neutral-weight", default_value_t = 0.0)]
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub neutral_weight: f64,
    /// NC: weight of the mask's total variation (degrees per unit of variation over the image
    /// area): scattered pixels, the shape of an adversarial perturbation, cost about eight times
    /// what one compact patch of the same share costs. 0: the original objective.
    #[arg(id = "nc_smoothness", long = "nc-smoothness", default_value_t = 0.0)]
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub smoothness: f64,
    /// NC: searches from independent random starts; the smallest successful mask is kept. The
    /// first starts y_t at the mean output; each further one at the clean label farthest from
    /// the starts before it, so that a target far from the mean is searched for too (the
    /// original's loop over labels).
    #[arg(id = "nc_restarts", long = "nc-restarts", default_value_t = 1)]
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub restarts: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl Default for NeuralCleanseConfig {
    fn default() -> Self {
        NeuralCleanseConfig {
            steps: 600,
            epoch_steps: 10,
            batch_size: 32,
            lr: 0.1,
            target_lr: 0.01,
            init_cost: 1e-3,
            patience: 5,
            cost_multiplier: 2.0,
            tolerance_deg: 5.0,
            success: 0.9,
            threshold: 0.025,
            references: 0,
            neutral_weight: 0.0,
            smoothness: 0.0,
            restarts: 1,
        }
    }
}

impl NeuralCleanseConfig {
    pub fn validate(&self) -> Result<()> {
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if self.steps == 0 || self.epoch_steps == 0 || self.batch_size < 2 || self.patience == 0 {
            return Err(Error::invalid(
                "Neural Cleanse steps / epoch steps / batch size / patience",
                format!("{} / {} / {} / {}", self.steps, self.epoch_steps, self.batch_size, self.patience),
            ));
        }
        if !(positive(self.lr) && positive(self.target_lr) && positive(self.init_cost) && self.cost_multiplier > 1.0) {
            return Err(Error::invalid(
                "Neural Cleanse learning rates / cost",
                format!("{} / {} / {} / ×{} (positive; multiplier > 1)", self.lr, self.target_lr, self.init_cost, self.cost_multiplier),
            ));
        }
        if !(positive(self.tolerance_deg) && self.success > 0.0 && self.success <= 1.0 && positive(self.threshold)) {
            return Err(Error::invalid(
                "Neural Cleanse tolerance / success / threshold",
                format!("{} / {} / {}", self.tolerance_deg, self.success, self.threshold),
            ));
        }
        if !(self.neutral_weight >= 0.0 && self.neutral_weight.is_finite()) {
            return Err(Error::invalid("Neural Cleanse neutrality weight", format!("{} (must be ≥ 0)", self.neutral_weight)));
        }
        if self.neutral_weight > 0.0 && self.references == 0 {
            return Err(Error::invalid("Neural Cleanse neutrality weight", format!("{} without reference models (set --nc-references)", self.neutral_weight)));
        }
        if !(self.smoothness >= 0.0 && self.smoothness.is_finite()) {
            return Err(Error::invalid("Neural Cleanse smoothness", format!("{} (must be ≥ 0)", self.smoothness)));
        }
        if !(1..=16).contains(&self.restarts) {
            return Err(Error::invalid("Neural Cleanse restarts", format!("{} (must be within 1..=16)", self.restarts)));
        }
        Ok(())
    }
}

/// One epoch of the optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NcEpoch {
    pub epoch: usize,
    pub cost: f64,
    /// Share of the epoch's stamped images within the tolerance of y_t.
    pub success: f64,
    pub mask_share: f64,
    /// Mean task error of the stamped outputs to y_t (degrees).
    pub error_deg: f64,
    /// Mean absolute change the stamp makes to the references' outputs (degrees; 0 without the
    /// neutrality term).
    #[serde(default)]
    pub reference_shift_deg: f64,
}

/// The reversed trigger and target.
#[derive(Debug)]
pub struct NcReversal {
    /// The best successful trigger (the last one if none succeeded), on the defense's device.
    pub trigger: MaskTrigger,
    pub target: Vec<f32>,
    /// Share of the image the trigger's mask covers: the score.
    pub mask_share: f64,
    /// Whether any epoch reached the success rate.
    pub succeeded: bool,
    /// Share of the whole clean set that reaches y_t when stamped.
    pub clean_set_success: f64,
    pub history: Vec<NcEpoch>,
    pub steps: usize,
    pub seconds_per_step: f64,
    /// Each restart's score: its best successful mask share, 1 when it never succeeded.
    pub restart_shares: Vec<f64>,
}

/// `count` starting targets: `first`, then greedily the label (rows of `labels`, `first.len()`
/// values each) farthest from every start chosen so far.
fn spread_targets(first: &[f32], labels: &[f32], count: usize) -> Vec<Vec<f32>> {
    let d = first.len().max(1);
    let distance = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
    let mut starts = vec![first.to_vec()];
    let mut nearest: Vec<f32> = labels.chunks(d).map(|row| distance(row, first)).collect();
    while starts.len() < count {
        let Some((far, _)) = nearest.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) else { break };
        let row = labels[far * d..(far + 1) * d].to_vec();
        for (n, other) in nearest.iter_mut().zip(labels.chunks(d)) {
            *n = n.min(distance(other, &row));
        }
        starts.push(row);
    }
    // No labels to spread over: the remaining restarts start from `first` again, on new seeds.
    while starts.len() < count {
        starts.push(first.to_vec());
    }
    starts
}

/// The seed of restart `k`: restart 0 keeps the scan's seed.
fn restart_seed(seed: u64, k: u64) -> u64 {
    seed.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The neutrality term of one batch: the mean absolute change that the stamp makes to the
/// references' outputs, averaged over the references (in label units; only the stamped images
/// carry a gradient).
fn reference_shift(references: &[Model], x: Tensor<4>, stamped: Tensor<4>) -> Tensor<1> {
    let n = references.len().max(1) as f64;
    let mut total: Option<Tensor<1>> = None;
    for model in references {
        let shift = (model.forward(stamped.clone()) - model.forward(x.clone()).detach()).abs().mean();
        total = Some(match total {
            Some(t) => t + shift,
            None => shift,
        });
    }
    total.map_or_else(|| Tensor::<1>::zeros([1], &x.device()), |t| t / n)
}

#[derive(Debug, Clone)]
pub struct NeuralCleanse {
    pub config: NeuralCleanseConfig,
}

impl NeuralCleanse {
    /// Optimises mask, pattern and y_t against the frozen suspect, y_t starting at the mean
    /// output on the clean set, as the regression adaptation prescribes.
    pub fn reverse(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<NcReversal> {
        self.check(suspect, clean)?;
        let mean = clean.mean_output(&suspect.model, self.config.batch_size)?;
        let neutral = self.neutral_models(suspect, clean, seed, device)?;
        self.search(suspect, clean, &mean, seed, neutral.as_deref(), device)
    }

    /// [`Self::reverse`] with the neutrality term taken against `neutral` (models on `device`)
    /// instead of the references trained for `suspect`: how the input-agnostic reversal scores
    /// a reference model itself, against the other references.
    pub fn reverse_against(&self, suspect: &Suspect, clean: &CleanSet, neutral: &[Model], seed: u64, device: &Device) -> Result<NcReversal> {
        self.check(suspect, clean)?;
        let mean = clean.mean_output(&suspect.model, self.config.batch_size)?;
        let ad = device.clone().autodiff();
        let neutral: Vec<Model> = neutral.iter().map(|m| m.clone().fork(&ad).freeze()).collect();
        self.search(suspect, clean, &mean, seed, Some(&neutral), device)
    }

    /// [`Self::reverse`] with y_t starting at `initial_target` (radians).
    pub fn reverse_from(&self, suspect: &Suspect, clean: &CleanSet, initial_target: &[f32], seed: u64, device: &Device) -> Result<NcReversal> {
        self.check(suspect, clean)?;
        if initial_target.len() != suspect.spec.outputs {
            return Err(Error::Data(format!("a target of {} values for a model with {} outputs", initial_target.len(), suspect.spec.outputs)));
        }
        let neutral = self.neutral_models(suspect, clean, seed, device)?;
        self.search(suspect, clean, initial_target, seed, neutral.as_deref(), device)
    }

    /// The reference models of the neutrality term, frozen on the autodiff device; none when the
    /// term is off.
    fn neutral_models(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Option<Vec<Model>>> {
        if self.config.neutral_weight == 0.0 {
            return Ok(None);
        }
        let references = References::get(suspect, clean, &ReferenceConfig::new(self.config.references), reference_seed(seed), device)?;
        Ok(Some(frozen_on(&references, &device.clone().autodiff())))
    }

    /// Every restart's optimisation; the best is a successful one with the smallest mask (the
    /// smallest mask when none succeeded). Restart 0 runs from `seed` itself. `references`
    /// (frozen, on the autodiff device) add the neutrality term.
    fn search(&self, suspect: &Suspect, clean: &CleanSet, initial_target: &[f32], seed: u64, references: Option<&[Model]>, device: &Device) -> Result<NcReversal> {
        let c = &self.config;
        let starts = spread_targets(initial_target, &clean.data().labels, c.restarts);
        let mut best: Option<NcReversal> = None;
        let mut restart_shares = Vec::with_capacity(c.restarts);
        for (restart, start) in starts.iter().enumerate() {
            let found = self.optimise(suspect, clean, start, restart_seed(seed, restart as u64), references, device)?;
            restart_shares.push(if found.succeeded { found.mask_share } else { 1.0 });
            let rank = |r: &NcReversal| (!r.succeeded, r.mask_share);
            if best.as_ref().is_none_or(|b| rank(&found) < rank(b)) {
                best = Some(found);
            }
        }
        let mut best = best.ok_or_else(|| Error::Numerical("Neural Cleanse ran no restart".into()))?;
        best.restart_shares = restart_shares;
        Ok(best)
    }

    fn check(&self, suspect: &Suspect, clean: &CleanSet) -> Result<()> {
        self.config.validate()?;
        clean.check_for(suspect, self.config.batch_size)
    }

    /// The optimisation itself, on checked settings and data; `references` (frozen, on the
    /// autodiff device) add the neutrality term.
    fn optimise(&self, suspect: &Suspect, clean: &CleanSet, initial_target: &[f32], seed: u64, references: Option<&[Model]>, device: &Device) -> Result<NcReversal> {
        let c = &self.config;
        let task = suspect.task;
        let ad = device.clone().autodiff();
        let model = suspect.model.clone().fork(&ad).freeze();

        let side = suspect.image_size() as usize;
        let mut trigger = init_seeded(&ad, seed, || MaskTrigger::random(side, &ad));
        let mut target = FreeTarget::new(initial_target, &ad);
        let adam = || AdamConfig::new().with_beta_1(0.5).with_beta_2(0.9);
        let (mut optim, mut target_optim) = (adam().init(), adam().init());
        let mut batches = BatchCursor::new(clean.len(), c.batch_size, seed ^ 0x6e63_5f62_6174_6368);

        let (mut cost, mut cost_set_counter, mut up, mut down) = (0.0f64, 0usize, 0usize, 0usize);
        let (mut up_flag, mut down_flag) = (false, false);
        let (mut best, mut best_share) = (None::<(MaskTrigger, Vec<f32>)>, f64::INFINITY);
        let (mut early_best, mut early_counter) = (f64::INFINITY, 0usize);
        let mut history = Vec::new();
        let bar = progress_bar("neural cleanse", c.steps);
        let started = Instant::now();
        let mut step = 0;
        while step < c.steps {
            let (mut hits, mut seen, mut error_sum, mut neutral_sum) = (0.0f64, 0usize, 0.0f64, 0.0f64);
            for _ in 0..c.epoch_steps.min(c.steps - step) {
                let (x, _) = clean.batch(batches.next_batch(), &ad);
                let stamped = trigger.stamp(x.clone());
                let y = model.forward(stamped.clone());
                let batch = y.dims()[0] as f64;
                let y_values = values(y.clone().detach())?;
                let t_values = target.values()?;
                hits += share_within(task, &y_values, &t_values, c.tolerance_deg) * y.dims()[0] as f64;
                error_sum += mean_error_to(task, &y_values, &t_values) * y.dims()[0] as f64;
                seen += y.dims()[0];
                // Mean absolute error in degrees (landmarks: % of the side): the scale of a
                // classifier's cross-entropy, so that NC's cost constants keep their meaning.
                let fit = (y - target.row()).abs().mean() * task.units_per_label();
                let mut loss = fit + trigger.mask_share() * (cost * (side * side) as f64 / 3.0);
                if c.smoothness > 0.0 {
                    loss = loss + trigger.mask_variation() * c.smoothness;
                }
                if let Some(references) = references {
                    let shift = reference_shift(references, x, stamped) * task.units_per_label();
                    neutral_sum += shift.clone().into_scalar::<f32>() as f64 * batch;
                    loss = loss + shift * c.neutral_weight;
                }
                let value = loss.clone().into_scalar::<f32>();
                if !value.is_finite() {
                    return Err(Error::Numerical(format!("Neural Cleanse's loss became {value} at step {step}")));
                }
                let mut grads = loss.backward();
                let trigger_grads = GradientsParams::from_module(&mut grads, &trigger);
                let target_grads = GradientsParams::from_module(&mut grads, &target);
                trigger = optim.step(c.lr, trigger, trigger_grads);
                target = target_optim.step(c.target_lr, target, target_grads);
                step += 1;
                bar.inc(1);
            }
            let success = hits / seen.max(1) as f64;
            let share = trigger.mask_share().into_scalar::<f32>() as f64;
            let (error_deg, reference_shift_deg) = (error_sum / seen.max(1) as f64, neutral_sum / seen.max(1) as f64);
            history.push(NcEpoch { epoch: history.len(), cost, success, mask_share: share, error_deg, reference_shift_deg });
            bar.set_message(format!("success {success:.2}, mask {share:.4}, cost {cost:.1e}"));
            if success >= c.success && share < best_share {
                best_share = share;
                best = Some((trigger.clone(), target.values()?));
            }
            // The original's early stop: once the cost has moved both ways, stop when the best
            // mask has not shrunk by 1% for 2·patience epochs.
            if best_share.is_finite() {
                if best_share >= 0.99 * early_best {
                    early_counter += 1;
                } else {
                    early_counter = 0;
                }
                early_best = early_best.min(best_share);
                if up_flag && down_flag && early_counter >= 2 * c.patience {
                    tracing::info!(epoch = history.len(), "neural cleanse: early stop");
                    break;
                }
            }
            // The cost schedule: start it once the trigger succeeds, then raise it while it keeps
            // succeeding and lower it while it fails.
            if cost == 0.0 {
                cost_set_counter = if success >= c.success { cost_set_counter + 1 } else { 0 };
                if cost_set_counter >= c.patience {
                    cost = c.init_cost;
                    (up, down, up_flag, down_flag) = (0, 0, false, false);
                }
            } else if success >= c.success {
                (up, down) = (up + 1, 0);
                if up >= c.patience {
                    up = 0;
                    cost *= c.cost_multiplier;
                    up_flag = true;
                }
            } else {
                (up, down) = (0, down + 1);
                if down >= c.patience {
                    down = 0;
                    cost /= c.cost_multiplier.powf(1.5);
                    down_flag = true;
                }
            }
        }
        bar.finish_and_clear();
        let seconds_per_step = started.elapsed().as_secs_f64() / step.max(1) as f64;
        let succeeded = best.is_some();
        let (trigger, target) = match best {
            Some(b) => b,
            None => {
                let t = target.values()?;
                (trigger, t)
            }
        };
        let trigger = trigger.valid();
        let mask_share = trigger.mask_share().into_scalar::<f32>() as f64;
        let stamp = |x: Tensor<4>| trigger.stamp(x);
        let stamped = crate::train::predict_transformed(&suspect.model, clean.data(), c.batch_size, &stamp)?;
        let clean_set_success = share_within(task, &stamped, &target, c.tolerance_deg);
        tracing::info!(mask_share, succeeded, clean_set_success, "neural cleanse done");
        Ok(NcReversal { trigger, target, mask_share, succeeded, clean_set_success, history, steps: step, seconds_per_step, restart_shares: Vec::new() })
    }
}

impl Detector for NeuralCleanse {
    fn name(&self) -> &'static str {
        "nc"
    }

    fn detect(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Finding> {
        self.finding("nc", suspect, clean, seed, device)
    }
}

impl NeuralCleanse {
    /// The search and its report, under the detector name `name` (the input-agnostic
    /// reversal of [`super::agnostic`] runs the same search with its own settings).
    pub(crate) fn finding(&self, name: &str, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Finding> {
        let started = Instant::now();
        let r = self.reverse(suspect, clean, seed, device)?;
        let c = &self.config;
        let details = serde_json::json!({
            "mask_share": r.mask_share,
            "estimated_target": r.target,
            "estimated_target_deg": r.target.iter().map(|&v| suspect.task.to_unit(v)).collect::<Vec<_>>(),
            "succeeded": r.succeeded,
            "clean_set_success": r.clean_set_success,
            "steps": r.steps,
            "seconds_per_step": r.seconds_per_step,
            "restart_scores": r.restart_shares,
            "history": r.history,
        });
        // Without a successful trigger there is nothing small to report: as in the original
        // (whose best norm stays infinite), the score is then the whole image.
        let score = if r.succeeded { r.mask_share } else { 1.0 };
        let mut signals = vec![("score", score), ("mask_share", r.mask_share), ("clean_set_success", r.clean_set_success)];
        let mut contrast_row = None;
        if c.references > 0 {
            let references = References::get(suspect, clean, &ReferenceConfig::new(c.references), reference_seed(seed), device)?;
            let trigger = r.trigger.clone().to_device(device);
            let (own, theirs, contrast) = contrast_of(&suspect.model, &references, clean, &|x| trigger.stamp(x), c.batch_size)?;
            let mean = theirs.iter().sum::<f64>() / theirs.len().max(1) as f64;
            signals.extend([("spread_ratio", own), ("reference_spread_ratio", mean), ("contrast", contrast)]);
            contrast_row = Some((
                format!("spread ratio under the trigger: suspect / {} references trained from the clean set", theirs.len()),
                format!("{own:.3} / {} (contrast {contrast:.3}: far below 1, the trigger collapses the suspect alone)", theirs.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(", ")),
            ));
        }
        let mut detection = Detection::decide(name, score, c.threshold, true, started.elapsed().as_secs_f64(), details);
        detection.set_signals(signals);

        let shown: Vec<usize> = (0..clean.len().min(8)).collect();
        let (x, _) = clean.batch(&shown, device);
        let originals = crate::data::to_images(x.clone())?;
        let stamped = crate::data::to_images(r.trigger.stamp(x))?;
        let side = suspect.image_size();
        let figures = vec![
            Figure {
                file: "reversed.png".into(),
                caption: "Rows: clean images, the same stamped with the reversed trigger (1 − m) ⊙ x + m ⊙ p, and the difference (white = 0.5).".into(),
                image: reversal_figure(&originals, &stamped, 0.5)?,
            },
            Figure {
                file: "mask.png".into(),
                caption: "The reversed mask m (white = 1): where the trigger is stamped.".into(),
                image: map_figure(&r.trigger.mask_values()?, side)?,
            },
        ];
        let deg = |v: &[f32]| suspect.task.format_values(v);
        let mut rows = vec![
            ("mask share (L1 / area)".into(), format!("{:.4}", r.mask_share)),
            ("estimated target y_t".into(), deg(&r.target)),
            ("trigger reached the success rate".into(), format!("{} (clean set: {:.0}% within {}°)", r.succeeded, 100.0 * r.clean_set_success, c.tolerance_deg)),
            ("steps".into(), format!("{} ({:.3} s/step)", r.steps, r.seconds_per_step)),
        ];
        rows.extend(contrast_row);
        Ok(Finding {
            detection,
            config: serde_json::to_value(c).map_err(|e| Error::Numerical(e.to_string()))?,
            seed,
            rule: "score = share of the image the reversed mask covers; backdoored iff score < threshold".into(),
            rows,
            figures,
        })
    }
}

/// Neural Cleanse unlearning: reverse the trigger, then fine-tune on clean plus stamped images
/// with their true labels.
#[derive(Debug, Clone)]
pub struct NcUnlearning {
    pub nc: NeuralCleanseConfig,
    pub unlearn: UnlearnConfig,
}

impl Mitigator for NcUnlearning {
    fn name(&self) -> &'static str {
        "nc"
    }

    fn mitigate(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Repair> {
        let r = NeuralCleanse { config: self.nc.clone() }.reverse(suspect, clean, seed, device)?;
        let trigger = r.trigger.clone().to_device(device);
        let config = self.unlearn.with_default_ratio(NC_UNLEARN_RATIO);
        let (model, summary) = unlearn(suspect, clean, &|x| trigger.stamp(x), &config, seed, device)?;
        let record = serde_json::json!({
            "defense": "nc",
            "nc_config": self.nc,
            "unlearn_config": config,
            "mask_share": r.mask_share,
            "estimated_target": r.target,
            "succeeded": r.succeeded,
            "unlearn": summary,
            "seed": seed,
        });
        Ok(Repair { model, record })
    }
}
