//! Neural Cleanse's optimisation: mask, pattern and target against the frozen suspect, with the
//! original's cost schedule, restarts, and the optional neutrality and smoothness terms.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::windows::{WindowSeed, WindowStart};
use super::{NeuralCleanse, RestartTargets};
use crate::defenses::references::{ReferenceConfig, References, frozen_on, reference_seed};
use crate::defenses::trigger::{FreeTarget, MaskTrigger};
use crate::defenses::{BatchCursor, CleanSet, Suspect, values};
use crate::error::{Error, Result};
use crate::metrics::{mean_error_to, share_within};
use crate::models::inference::predict;
use crate::models::{Model, Regressor, init_seeded};
use crate::parallel::{map_in_pools, workers_for};
use crate::progress::progress_bar;

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
    /// Each window start: its window, the window's objective, and the start's score.
    pub windows: Vec<WindowStart>,
}

/// Where one start of the search begins.
#[derive(Clone, Copy)]
pub(super) enum Start<'a> {
    /// A random mask and pattern (NC's start), y_t at the given target.
    Random(&'a [f32]),
    /// The mask on a window, with the window's pattern and target.
    Window(&'a WindowSeed),
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

/// A cell counts as covered by a mask, and is closed to the later starts of an `exclude` search,
/// from this share of the mask's largest value: the body of a compact edit, not its faint halo.
const COVERED_FROM: f32 = 0.25;

/// Weight of the mask on closed cells (degrees per unit of the mean mask value over them): far
/// above what a fit gains there, so that a start pays more for a closed cell than for any open
/// one.
const CLOSED_WEIGHT: f64 = 100.0;

/// `closed` (one flag per mask cell, 1 = closed) with the cells that `mask` covers added.
fn close_covered(closed: Option<Vec<f32>>, mask: &[f32]) -> Vec<f32> {
    let peak = mask.iter().copied().fold(0.0f32, f32::max);
    let mut closed = closed.unwrap_or_else(|| vec![0.0; mask.len()]);
    for (c, &m) in closed.iter_mut().zip(mask) {
        if peak > 0.0 && m >= COVERED_FROM * peak {
            *c = 1.0;
        }
    }
    closed
}

/// The mask's cell: the largest up to `setting` that tiles a `side`-pixel image (227 pixels: 1).
fn mask_cell(side: usize, setting: usize) -> usize {
    (1..=setting).rev().find(|k| side % k == 0).unwrap_or(1)
}

/// The seed of restart `k`: restart 0 keeps the scan's seed.
pub(super) fn restart_seed(seed: u64, k: u64) -> u64 {
    seed.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The reference models of the neutrality term, with their outputs on every clean image. A
/// clean image's output never changes during a search, so it is computed once instead of at
/// every step, where it was a quarter of a step's work (two references).
pub(super) struct Neutral<'a> {
    models: &'a [Model],
    /// Per reference, its outputs on the clean set, row-major `[n, d]`.
    clean_outputs: Vec<Vec<f32>>,
    dim: usize,
}

impl<'a> Neutral<'a> {
    pub(super) fn new(models: &'a [Model], clean: &CleanSet, batch_size: usize) -> Result<Self> {
        let clean_outputs = models.iter().map(|m| predict(m, clean.data(), batch_size)).collect::<Result<_>>()?;
        Ok(Neutral { models, clean_outputs, dim: clean.data().dim() })
    }

    /// The neutrality term of one batch: the mean absolute change that the stamp makes to the
    /// references' outputs on the clean images `indices`, averaged over the references (in label
    /// units; only the stamped images carry a gradient).
    fn shift(&self, indices: &[usize], stamped: Tensor<4>) -> Tensor<1> {
        let device = stamped.device();
        let n = self.models.len().max(1) as f64;
        let mut total: Option<Tensor<1>> = None;
        for (model, outputs) in self.models.iter().zip(&self.clean_outputs) {
            let rows: Vec<f32> = indices.iter().flat_map(|&i| outputs[i * self.dim..(i + 1) * self.dim].iter().copied()).collect();
            let before = Tensor::<2>::from_data(TensorData::new(rows, [indices.len(), self.dim]), &device);
            let shift = (model.forward(stamped.clone()) - before).abs().mean();
            total = Some(match total {
                Some(t) => t + shift,
                None => shift,
            });
        }
        total.map_or_else(|| Tensor::<1>::zeros([1], &device), |t| t / n)
    }
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
        let neutral = references.map(|models| Neutral::new(models, clean, c.batch_size)).transpose()?;
        let starts = match c.restart_targets {
            RestartTargets::Spread => spread_targets(initial_target, &clean.data().labels, c.restarts),
            RestartTargets::Mean | RestartTargets::Exclude => vec![initial_target.to_vec(); c.restarts],
        };
        let mut found = if c.restart_targets == RestartTargets::Exclude {
            // Each start depends on the masks before it: one after the other.
            let mut found = Vec::with_capacity(starts.len());
            let mut closed: Option<Vec<f32>> = None;
            for (restart, start) in starts.iter().enumerate() {
                let r = self.optimise(suspect, clean, Start::Random(start), restart_seed(seed, restart as u64), neutral.as_ref(), closed.as_deref(), device)?;
                if r.succeeded {
                    closed = Some(close_covered(closed, &values(r.trigger.cell_mask())?));
                }
                found.push(r);
            }
            found
        } else {
            // The starts are independent: side by side where the pool has two threads or more.
            map_in_pools(starts.len(), workers_for(starts.len()), |restart| {
                self.optimise(suspect, clean, Start::Random(&starts[restart]), restart_seed(seed, restart as u64), neutral.as_ref(), None, device)
            })?
        };
        let restart_shares: Vec<f64> = found.iter().map(|r| if r.succeeded { r.mask_share } else { 1.0 }).collect();
        let mut windows = Vec::new();
        if c.window_starts > 0 {
            let ad = device.clone().autodiff();
            let model = suspect.model.clone().fork(&ad).freeze();
            let first = restart_seed(seed, c.restarts as u64);
            let cell = mask_cell(suspect.image_size() as usize, c.mask_cell);
            let mut seeds = self.probe_windows(&model, references, clean, suspect.task, suspect.image_size() as usize, cell, initial_target, first, &ad)?;
            seeds.truncate(c.window_starts);
            let from_windows = map_in_pools(seeds.len(), workers_for(seeds.len()), |k| {
                self.optimise(suspect, clean, Start::Window(&seeds[k]), restart_seed(first, k as u64 + 1), neutral.as_ref(), None, device)
            })?;
            for (s, r) in seeds.iter().zip(&from_windows) {
                windows.push(WindowStart { window: s.window, objective: s.objective, mask_share: if r.succeeded { r.mask_share } else { 1.0 } });
            }
            found.extend(from_windows);
        }
        let rank = |r: &NcReversal| (!r.succeeded, r.mask_share);
        let mut best = found
            .into_iter()
            .reduce(|best, r| if rank(&r) < rank(&best) { r } else { best })
            .ok_or_else(|| Error::Numerical("Neural Cleanse ran no restart".into()))?;
        (best.restart_shares, best.windows) = (restart_shares, windows);
        Ok(best)
    }

    fn check(&self, suspect: &Suspect, clean: &CleanSet) -> Result<()> {
        self.config.validate()?;
        clean.check_for(suspect, self.config.batch_size)
    }

    /// The optimisation itself, on checked settings and data; `neutral` (references frozen on
    /// the autodiff device) adds the neutrality term, and `closed` (one flag per mask cell) the cost
    /// of the cells an earlier start covered.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn optimise(&self, suspect: &Suspect, clean: &CleanSet, start: Start<'_>, seed: u64, neutral: Option<&Neutral<'_>>, closed: Option<&[f32]>, device: &Device) -> Result<NcReversal> {
        let c = &self.config;
        let task = suspect.task;
        let ad = device.clone().autodiff();
        let model = suspect.model.clone().fork(&ad).freeze();

        let side = suspect.image_size() as usize;
        let cell = mask_cell(side, c.mask_cell);
        let (mut trigger, initial_target) = match start {
            Start::Random(target) => (init_seeded(&ad, seed, || MaskTrigger::random(side, cell, &ad)), target),
            Start::Window(w) => (w.trigger(side, cell, &ad), w.target.as_slice()),
        };
        let mut target = FreeTarget::new(initial_target, &ad);
        let closed = closed.filter(|flags| flags.iter().any(|&f| f > 0.0)).map(|flags| {
            let cells = side / cell;
            let count = flags.iter().filter(|&&f| f > 0.0).count() as f64;
            (Tensor::<1>::from_floats(flags, &ad).reshape([1, 1, cells, cells]), count)
        });
        let adam = || AdamConfig::new().with_beta_1(0.5).with_beta_2(0.9);
        let (mut optim, mut target_optim) = (adam().init(), adam().init());
        let mut batches = BatchCursor::new(clean.len(), c.batch_size, seed ^ 0x6e63_5f62_6174_6368);

        let (mut cost, mut cost_set_counter, mut up, mut down) = (0.0f64, 0usize, 0usize, 0usize);
        let (mut up_flag, mut down_flag) = (false, false);
        let (mut best, mut best_share) = (None::<(MaskTrigger, Vec<f32>)>, f64::INFINITY);
        let (mut early_best, mut early_counter) = (f64::INFINITY, 0usize);
        let mut history = Vec::new();
        let required = c.required_success(task);
        let bar = progress_bar("neural cleanse", c.steps);
        let started = Instant::now();
        let mut step = 0;
        while step < c.steps {
            let (mut hits, mut seen, mut error_sum, mut neutral_sum) = (0.0f64, 0usize, 0.0f64, 0.0f64);
            for _ in 0..c.epoch_steps.min(c.steps - step) {
                let indices = batches.next_batch().to_vec();
                let (x, _) = clean.batch(&indices, &ad);
                let stamped = trigger.stamp(x);
                let y = model.forward(stamped.clone());
                let batch = y.dims()[0] as f64;
                let y_values = values(y.clone().detach())?;
                let t_values = target.values()?;
                hits += share_within(task, &y_values, &t_values, c.tolerance_deg) * y.dims()[0] as f64;
                error_sum += mean_error_to(task, &y_values, &t_values) * y.dims()[0] as f64;
                seen += y.dims()[0];
                let fit = if task.is_classification() {
                    // The original: cross-entropy to the target class, whose one-hot row stays.
                    crate::train::task_loss(task, y, target.row().detach())
                } else {
                    // Mean absolute error in degrees (landmarks: % of the side): the scale of a
                    // classifier's cross-entropy, so that NC's cost constants keep their meaning.
                    (y - target.row()).abs().mean() * task.units_per_label()
                };
                let mut loss = fit + trigger.mask_share() * (cost * (side * side) as f64 / 3.0);
                if c.smoothness > 0.0 {
                    loss = loss + trigger.mask_variation() * c.smoothness;
                }
                if let Some((flags, count)) = &closed {
                    loss = loss + (trigger.cell_mask() * flags.clone()).sum() * (CLOSED_WEIGHT / count);
                }
                if let Some(neutral) = neutral {
                    let shift = neutral.shift(&indices, stamped) * task.units_per_label();
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
                if !task.is_classification() {
                    target = target_optim.step(c.target_lr, target, target_grads);
                }
                step += 1;
                bar.inc(1);
            }
            let success = hits / seen.max(1) as f64;
            let share = trigger.mask_share().into_scalar::<f32>() as f64;
            let (error_deg, reference_shift_deg) = (error_sum / seen.max(1) as f64, neutral_sum / seen.max(1) as f64);
            history.push(NcEpoch { epoch: history.len(), cost, success, mask_share: share, error_deg, reference_shift_deg });
            bar.set_message(format!("success {success:.2}, mask {share:.4}, cost {cost:.1e}"));
            if success >= required && share < best_share {
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
                cost_set_counter = if success >= required { cost_set_counter + 1 } else { 0 };
                if cost_set_counter >= c.patience {
                    cost = c.init_cost;
                    (up, down, up_flag, down_flag) = (0, 0, false, false);
                }
            } else if success >= required {
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
        let stamped = crate::models::inference::predict_transformed(&suspect.model, clean.data(), c.batch_size, &stamp)?;
        let clean_set_success = share_within(task, &stamped, &target, c.tolerance_deg);
        tracing::info!(mask_share, succeeded, clean_set_success, "neural cleanse done");
        Ok(NcReversal { trigger, target, mask_share, succeeded, clean_set_success, history, steps: step, seconds_per_step, restart_shares: Vec::new(), windows: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_targets_start_at_the_first_then_at_the_farthest_labels() {
        // Two outputs per label: (0, 0), (1, 0), (5, 5), (0.5, 0.5).
        let labels = [0.0, 0.0, 1.0, 0.0, 5.0, 5.0, 0.5, 0.5];
        let starts = spread_targets(&[0.0, 0.0], &labels, 3);
        assert_eq!(starts, vec![vec![0.0, 0.0], vec![5.0, 5.0], vec![1.0, 0.0]]);
        // Without labels, the further starts repeat the first.
        assert_eq!(spread_targets(&[0.2, 0.1], &[], 2), vec![vec![0.2, 0.1]; 2]);
    }

    #[test]
    fn covered_cells_close_from_a_quarter_of_the_peak_and_accumulate() {
        let closed = close_covered(None, &[0.0, 0.1, 0.3, 1.0]);
        assert_eq!(closed, vec![0.0, 0.0, 1.0, 1.0]);
        // A later mask adds its own cells; an empty one closes nothing.
        assert_eq!(close_covered(Some(closed.clone()), &[0.5, 0.0, 0.0, 0.0]), vec![1.0, 0.0, 1.0, 1.0]);
        assert_eq!(close_covered(Some(closed.clone()), &[0.0; 4]), closed);
    }

    #[test]
    fn restarts_run_on_distinct_seeds() {
        let seeds: Vec<u64> = (0..4).map(|k| restart_seed(7, k)).collect();
        assert_eq!(seeds[0], 7);
        for (i, a) in seeds.iter().enumerate() {
            assert!(seeds[i + 1..].iter().all(|b| b != a));
        }
    }
}
