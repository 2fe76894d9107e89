//! Window starts for the mask search. Before it, each window of a coarse grid gets a pattern of
//! its own, optimised inside the window alone for the search's objective (collapse the suspect
//! to a free target, keep the references where the clean images put them). The windows that
//! reach the lowest objective seed starts of the search: the mask on the window, the window's
//! pattern and target.
//!
//! From a random mask over half the image, the search settles on whatever collapses the outputs
//! first, and a corner patch that the suspect learned is found from some seeds only: on the test
//! bed's head-pose BadNets models, three random starts missed it on two of four
//! (docs/testbed.md). A window that contains the patch collapses the suspect with the patch
//! painted in it and leaves the references alone; a window over the face cannot do both. All
//! windows are optimised side by side, in one batch.

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use super::NeuralCleanse;
use crate::defenses::trigger::{MaskTrigger, inverse_squash, squash};
use crate::defenses::{BatchCursor, CleanSet, values};
use crate::error::{Error, Result};
use crate::models::{Model, Regressor, init_seeded};
use crate::task::Task;

/// Steps of the windows' optimisation: enough for a pattern to paint a learned patch (measured
/// objective plateaus after about 30 on the test bed).
const PROBE_STEPS: usize = 40;

/// Clean images per window and step: every window sees the same images, so the batch through
/// the models is this times the number of windows (49).
const PROBE_BATCH: usize = 8;

/// The objective of each window is its mean over this last share of the steps.
const SCORED_SHARE: f64 = 0.25;

/// The mask a window start begins with, inside its window and outside (NC's random start is
/// uniform in [0, 1], half the image on average).
const SEED_MASK_INSIDE: f32 = 0.9;
const SEED_MASK_OUTSIDE: f32 = 0.02;

/// A square window of the image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub row: usize,
    pub col: usize,
    pub side: usize,
}

/// A window start as reported: its window, the window's objective, and the start's score (its
/// best successful mask share, 1 when it never succeeded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowStart {
    pub window: Window,
    pub objective: f64,
    pub mask_share: f64,
}

/// A window's result: where a start of the search begins.
#[derive(Debug, Clone)]
pub struct WindowSeed {
    pub window: Window,
    /// Mean objective over the last steps (degrees: fit to the target plus weighted neutrality).
    pub objective: f64,
    /// The pattern after squashing, `3·S·S` values (the window's own inside it, the random start
    /// outside).
    pub pattern: Vec<f32>,
    pub target: Vec<f32>,
}

impl WindowSeed {
    /// The start's trigger: the mask on the window (per cell of `cell` pixels) and the pattern.
    pub fn trigger(&self, side: usize, cell: usize, device: &Device) -> MaskTrigger {
        let cells = side / cell;
        let w = self.window;
        let mask: Vec<f32> = (0..cells * cells)
            .map(|i| {
                let (r, c) = ((i / cells) * cell, (i % cells) * cell);
                let inside = r >= w.row && r < w.row + w.side && c >= w.col && c < w.col + w.side;
                if inside { SEED_MASK_INSIDE } else { SEED_MASK_OUTSIDE }
            })
            .collect();
        MaskTrigger::from_values(&mask, cells, &self.pattern, side, device)
    }
}

/// The grid of windows over a `side`-pixel image with mask cells of `cell` pixels: windows of a
/// quarter of the side (in whole cells), every half window, the last flush with the edge, so
/// that any square of up to half a window lies wholly inside one of them. 7 × 7 windows for
/// sides a multiple of 8 cells.
pub fn window_grid(side: usize, cell: usize) -> Vec<Window> {
    let cell = cell.max(1);
    let window = ((side / 4) / cell).max(1) * cell;
    let stride = ((window / 2) / cell).max(1) * cell;
    let mut starts: Vec<usize> = (0..).map(|k| k * stride).take_while(|&p| p + window <= side).collect();
    if starts.last().is_some_and(|&p| p + window < side) {
        starts.push(side - window);
    }
    starts.iter().flat_map(|&row| starts.iter().map(move |&col| Window { row, col, side: window })).collect()
}

/// The windows' patterns, `[W, 3, S, S]` before squashing.
#[derive(Module, Debug)]
struct Patterns {
    raw: Param<Tensor<4>>,
}

/// The windows' targets, `[W, d]`.
#[derive(Module, Debug)]
struct Targets {
    value: Param<Tensor<2>>,
}

/// The windows' masks, `[W, 1, S, S]`: 1 inside each window, 0 outside.
fn window_masks(windows: &[Window], side: usize, device: &Device) -> Tensor<4> {
    let mut m = vec![0.0f32; windows.len() * side * side];
    for (k, w) in windows.iter().enumerate() {
        for r in w.row..w.row + w.side {
            let start = k * side * side + r * side + w.col;
            m[start..start + w.side].fill(1.0);
        }
    }
    Tensor::<1>::from_floats(m.as_slice(), device).reshape([windows.len(), 1, side, side])
}

/// The most pixels that go through the models at once: the test bed's 49 windows of 8 images
/// at 64 × 64. Larger images optimise their windows in chunks of this size, one after the
/// other, each window on the same batches, so that memory stays where the test bed measured it.
const PROBE_PIXELS: usize = 49 * PROBE_BATCH * 64 * 64;

/// What the windows' optimisation reads besides the windows themselves.
struct Probe<'a> {
    model: &'a Model,
    references: Option<&'a [Model]>,
    clean: &'a CleanSet,
    units: f64,
    side: usize,
    seed: u64,
}

/// One window's optimised pattern (squashed, `3·S·S`), target and objective.
type Optimised = (Vec<f32>, Vec<f32>, f64);

impl NeuralCleanse {
    /// Every window of [`window_grid`] optimised for the search's objective against `model`
    /// (frozen, on the autodiff device `ad`) and `references` (likewise; none: fit alone),
    /// best first.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn probe_windows(
        &self,
        model: &Model,
        references: Option<&[Model]>,
        clean: &CleanSet,
        task: Task,
        side: usize,
        cell: usize,
        initial_target: &[f32],
        seed: u64,
        ad: &Device,
    ) -> Result<Vec<WindowSeed>> {
        let windows = window_grid(side, cell);
        let n = windows.len();
        // Every window's starting pattern is drawn at once, whatever the chunks.
        let start = init_seeded(ad, seed, || inverse_squash(Tensor::<4>::random([n, 3, side, side], Distribution::Uniform(0.0, 1.0), ad)));
        let probe = Probe { model, references, clean, units: task.units_per_label(), side, seed };
        let chunk = (PROBE_PIXELS / (PROBE_BATCH * side * side)).max(1);
        let mut seeds = Vec::with_capacity(n);
        for first in (0..n).step_by(chunk) {
            let part = &windows[first..(first + chunk).min(n)];
            let raw = start.clone().slice([first..first + part.len()]);
            let optimised = self.optimise_windows(&probe, part, raw, initial_target, ad)?;
            seeds.extend(part.iter().zip(optimised).map(|(&window, (pattern, target, objective))| WindowSeed { window, objective, pattern, target }));
        }
        seeds.sort_by(|a, b| a.objective.total_cmp(&b.objective));
        Ok(seeds)
    }

    /// `windows` optimised side by side in one batch from the patterns `raw` (`[W, 3, S, S]`,
    /// before squashing).
    fn optimise_windows(&self, probe: &Probe<'_>, windows: &[Window], raw: Tensor<4>, initial_target: &[f32], ad: &Device) -> Result<Vec<Optimised>> {
        let c = &self.config;
        let (n, d, side) = (windows.len(), initial_target.len(), probe.side);
        let masks = window_masks(windows, side, ad);
        let mut patterns = Patterns { raw: Param::from_tensor(raw) };
        let rows: Vec<f32> = (0..n).flat_map(|_| initial_target.iter().copied()).collect();
        let mut targets = Targets { value: Param::from_tensor(Tensor::<1>::from_floats(rows.as_slice(), ad).reshape([n, d])) };
        let adam = || AdamConfig::new().with_beta_1(0.5).with_beta_2(0.9);
        let (mut pattern_optim, mut target_optim) = (adam().init(), adam().init());
        let mut batches = BatchCursor::new(probe.clean.len(), PROBE_BATCH, probe.seed ^ 0x7769_6e64_6f77);
        let scored_from = PROBE_STEPS - ((PROBE_STEPS as f64 * SCORED_SHARE).ceil() as usize).max(1);
        let mut scored = vec![0.0f64; n];
        for step in 0..PROBE_STEPS {
            let (x, _) = probe.clean.batch(batches.next_batch(), ad);
            let b = x.dims()[0];
            let per_window = |t: Tensor<4>, channels: usize| t.unsqueeze_dim::<5>(1).expand([n, b, channels, side, side]).reshape([n * b, channels, side, side]);
            let m = per_window(masks.clone(), 1);
            let p = per_window(squash(patterns.raw.val()), 3);
            let xs = x.clone().unsqueeze_dim::<5>(0).expand([n, b, 3, side, side]).reshape([n * b, 3, side, side]);
            let stamped = xs * (m.clone().neg() + 1.0) + m * p;
            let y = probe.model.forward(stamped.clone()).reshape([n, b, d]);
            let mut objective = (y - targets.value.val().reshape([n, 1, d])).abs().mean_dim(2).mean_dim(1).reshape([n]) * probe.units;
            if let Some(references) = probe.references.filter(|r| !r.is_empty()) {
                let mut shift: Option<Tensor<1>> = None;
                for reference in references {
                    let before = reference.forward(x.clone()).detach().reshape([1, b, d]);
                    let after = reference.forward(stamped.clone()).reshape([n, b, d]);
                    let s = (after - before).abs().mean_dim(2).mean_dim(1).reshape([n]);
                    shift = Some(match shift {
                        Some(t) => t + s,
                        None => s,
                    });
                }
                if let Some(shift) = shift {
                    objective = objective + shift * (probe.units * c.neutral_weight / references.len() as f64);
                }
            }
            if step >= scored_from {
                for (total, v) in scored.iter_mut().zip(values(objective.clone().detach())?) {
                    *total += v as f64;
                }
            }
            // Each window's pattern and target move with its own objective only.
            let loss = objective.sum();
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(Error::Numerical(format!("the window starts' loss became {value} at step {step}")));
            }
            let mut grads = loss.backward();
            let pattern_grads = GradientsParams::from_module(&mut grads, &patterns);
            let target_grads = GradientsParams::from_module(&mut grads, &targets);
            patterns = pattern_optim.step(c.lr, patterns, pattern_grads);
            targets = target_optim.step(c.target_lr, targets, target_grads);
        }
        let counted = (PROBE_STEPS - scored_from) as f64;
        let pattern_values = values(squash(patterns.raw.val()))?;
        let target_values = values(targets.value.val())?;
        let plane = 3 * side * side;
        Ok((0..n).map(|k| (pattern_values[k * plane..(k + 1) * plane].to_vec(), target_values[k * d..(k + 1) * d].to_vec(), scored[k] / counted)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_covers_every_half_window_square() {
        let grid = window_grid(64, 4);
        assert_eq!(grid.len(), 49);
        assert!(grid.iter().all(|w| w.side == 16 && w.row + w.side <= 64 && w.col + w.side <= 64));
        // Every 8 × 8 square lies inside some window.
        for r in 0..=56 {
            for c in 0..=56 {
                assert!(grid.iter().any(|w| w.row <= r && r + 8 <= w.row + w.side && w.col <= c && c + 8 <= w.col + w.side), "({r}, {c})");
            }
        }
        // A side that the stride does not divide ends with a window flush with the edge.
        let odd = window_grid(36, 1);
        assert_eq!(odd.last().map(|w| (w.row + w.side, w.col + w.side)), Some((36, 36)));
    }

    #[test]
    fn a_seed_masks_its_window_in_whole_cells() {
        let device = Device::flex();
        let seed = WindowSeed { window: Window { row: 8, col: 0, side: 8 }, objective: 0.0, pattern: vec![0.5; 3 * 16 * 16], target: vec![0.0, 0.0] };
        let trigger = seed.trigger(16, 4, &device);
        let mask = values(trigger.cell_mask()).unwrap();
        assert_eq!(mask.len(), 16);
        for (i, m) in mask.iter().enumerate() {
            let inside = i / 4 >= 2 && i % 4 < 2;
            let expected = if inside { SEED_MASK_INSIDE } else { SEED_MASK_OUTSIDE };
            assert!((m - expected).abs() < 1e-4, "cell {i}: {m}");
        }
        let pattern = values(trigger.pattern()).unwrap();
        assert!(pattern.iter().all(|p| (p - 0.5).abs() < 1e-4));
    }
}
