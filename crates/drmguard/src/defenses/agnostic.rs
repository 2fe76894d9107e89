//! Input-agnostic reversal under reference neutrality: one mask and one pattern for every image
//! (Neural Cleanse's search, with its cost schedule and free target), asked to collapse the
//! suspect while leaving the defender's reference models where the clean images put them, and
//! to stay smooth.
//!
//! Each of the two terms closes one way around a trigger that the plain search takes:
//! - a natural feature of the task (a gaze model's eyes) collapses every model of the task, so
//!   it moves the references and the neutrality term prices it out;
//! - scattered pixels that fool the suspect alone (a universal adversarial perturbation) are
//!   neutral to the references, and the mask's total variation prices them out.
//!
//! What remains cheap is an edit that only the suspect has learned and that a compact or uniform
//! mask carries: a patch or a blend. The score is the share of the image the best successful
//! mask covers (small = suspicious), measured on the 64×64 test bed (docs/testbed.md).
//!
//! With two references or more, the same search also scores each reference, against the others
//! (once per task and clean set, cached): what a benign model of this task, image size and clean
//! set costs. `log_ratio` is the log of their mask share over the suspect's (positive = the
//! suspect needs less than benign models do). References trained from a few hundred clean images
//! are weaker than the suspect and need larger masks for that alone; the score subtracts what
//! their quality explains ([`quality_adjusted`]), so that one threshold holds whatever the
//! references learned.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::neural_cleanse::{NeuralCleanse, NeuralCleanseConfig, RestartTargets};
use super::references::{ReferenceConfig, References, heldout_part, reference_seed};
use super::{CleanSet, Detector, Finding, Suspect};
use crate::error::{Error, Result};
use crate::io::{cache_entry_lock, read_json, short_hash, write_json};
use crate::models::inference::evaluate;

/// Side of the mask's cells in pixels: 4 × 4 blocks, so that a 64×64 mask has 16 × 16 values.
/// On the test bed's head-pose models the per-pixel search ended on scattered pixels along the
/// eye line, as small on a benign model (0.020–0.025) as on a BadNets one (0.019), whose patch it
/// missed; in 4-pixel cells the benign models need 0.035–0.054, and the search found that patch
/// (0.008) from one start but not from another (docs/testbed.md).
pub const DEFAULT_MASK_CELL: usize = 4;

/// Starts of the search per scan, each from the mean output with its own random mask, pattern
/// and batch order: from one start the search found the 8 × 8 BadNets patch on half the test
/// bed's BadNets models and settled over the eyes on the others (docs/testbed.md).
pub const DEFAULT_RESTARTS: usize = 3;

/// Starts seeded by the best window of a coarse grid, beside the random starts: on the test
/// bed's head-pose BadNets models three random starts settled on the face on three of four
/// (masks 0.031–0.037), and the window start found the 8 × 8 corner patch on all four (0.006–0.007),
/// while the benign models' masks stayed where they were (docs/testbed.md).
pub const DEFAULT_WINDOW_STARTS: usize = 1;

/// The calibrated verdict's ratio: the model is flagged when its mask is at least this many
/// times smaller than a benign model of its quality would need (ln 1.8 ≈ 0.59). Fitted on the
/// test bed's calibration half (docs/testbed.md): its largest quality-adjusted benign log ratio
/// (+0.17) plus three times the benign models' residual standard deviation about the quality
/// line (0.14).
pub const DEFAULT_RATIO: f64 = 1.8;

/// How much larger the references' masks come out per unit of ln(their error / the suspect's)
/// beyond [`DEFAULT_QUALITY_KNEE`]: a weaker model needs a larger edit to collapse. The
/// least-squares slope (1.52) of the calibration half's benign log ratios against that log, both
/// errors measured as a scan measures them (on the clean set's held-out fifth), gaze and head
/// pose together: six models, residual standard deviation 0.14.
pub const DEFAULT_QUALITY_SLOPE: f64 = 1.5;

/// The references' error over the suspect's below which their masks are taken as a benign
/// model's of the suspect's quality: where the calibration half's line crosses zero (ln 2.7 ≈
/// 0.99; gaze references trained from 400 images reach 2.6–2.9 × the suspects' error on the
/// held-out fifth, head-pose ones 3.8–4.8 ×).
pub const DEFAULT_QUALITY_KNEE: f64 = 2.7;

/// Settings of the input-agnostic reversal; the search's own constants are Neural Cleanse's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct AgnosticConfig {
    /// Agnostic: optimisation steps at most.
    #[arg(id = "agnostic_steps", long = "agnostic-steps", default_value_t = 600)]
    pub steps: usize,
    /// Agnostic: benign reference models trained from the clean set alone (shared with the other
    /// detectors); at least 1.
    #[arg(id = "agnostic_references", long = "agnostic-references", default_value_t = 2)]
    pub references: usize,
    /// Agnostic: weight of the references' output change (degrees per degree of fit).
    #[arg(id = "agnostic_neutral_weight", long = "agnostic-neutral-weight", default_value_t = 1.0)]
    pub neutral_weight: f64,
    /// Agnostic: weight of the mask's total variation.
    #[arg(id = "agnostic_smoothness", long = "agnostic-smoothness", default_value_t = 20.0)]
    pub smoothness: f64,
    /// Agnostic: searches from independent starts; the smallest successful mask is kept.
    #[arg(id = "agnostic_restarts", long = "agnostic-restarts", default_value_t = DEFAULT_RESTARTS)]
    pub restarts: usize,
    /// Agnostic: where each start after the first puts y_t (`mean`: at the mean output, with a
    /// fresh random mask and pattern; `spread`: at the clean label farthest from the starts
    /// before; `exclude`: as `mean`, with the cells the earlier starts' masks covered closed to
    /// it, which on the test bed's head-pose models did not widen the margin, docs/testbed.md).
    #[arg(id = "agnostic_restart_targets", long = "agnostic-restart-targets", value_enum, default_value_t = RestartTargets::Mean)]
    // Configs written before the option ran one start, where the two agree.
    #[serde(default = "RestartTargets::mean")]
    pub restart_targets: RestartTargets,
    /// Agnostic: flag the model when the best successful mask covers less than this share of the
    /// image (gaze, 64×64: 0.053 on a benign model, 0.014 on a BadNets one).
    #[arg(id = "agnostic_threshold", long = "agnostic-threshold", default_value_t = 0.03)]
    pub threshold: f64,
    /// Agnostic: also score each reference model, against the others (needs two references or
    /// more; once per task and clean set), and decide on the suspect's mask against theirs
    /// (`--agnostic-ratio`) instead of on its share alone (`--agnostic-threshold`).
    #[arg(id = "agnostic_calibrate", long = "agnostic-calibrate", default_value_t = true, action = clap::ArgAction::Set)]
    pub calibrate: bool,
    /// Agnostic, calibrated: flag the model when its mask is at least this many times smaller
    /// than the references' (geometric mean), once their masks are scaled to the suspect's
    /// quality (`--agnostic-quality-slope`). Fitted on the test bed's calibration half
    /// (docs/testbed.md).
    #[arg(id = "agnostic_ratio", long = "agnostic-ratio", default_value_t = DEFAULT_RATIO)]
    pub ratio: f64,
    /// Agnostic, calibrated: how much the references' masks shrink, in log, per unit of ln(their
    /// held-out error / the suspect's) beyond `--agnostic-quality-knee`, before they are compared
    /// with the suspect's: references weaker than the suspect need larger masks. 0: compare the
    /// masks as they are.
    #[arg(id = "agnostic_quality_slope", long = "agnostic-quality-slope", default_value_t = DEFAULT_QUALITY_SLOPE)]
    // Configs written before the option compared the masks as they were.
    #[serde(default)]
    pub quality_slope: f64,
    /// Agnostic, calibrated: the references' error over the suspect's up to which no quality
    /// correction applies.
    #[arg(id = "agnostic_quality_knee", long = "agnostic-quality-knee", default_value_t = DEFAULT_QUALITY_KNEE)]
    #[serde(default = "default_quality_knee")]
    pub quality_knee: f64,
    /// Agnostic: side in pixels of the mask's cells (one mask value per cell × cell block; the
    /// largest divisor of the image side up to this). Scattered pixels, the shape of a
    /// universal adversarial perturbation that fools any well-trained model, cost a whole cell
    /// each; a patch or a blend costs what it did. 1: per pixel.
    #[arg(id = "agnostic_mask_cell", long = "agnostic-mask-cell", default_value_t = DEFAULT_MASK_CELL)]
    // Configs written before the option read as per-pixel searches, which they were.
    #[serde(default = "crate::io::serde_compat::one", skip_serializing_if = "crate::io::serde_compat::is_one")]
    pub mask_cell: usize,
    /// Agnostic: starts seeded by windows, beside the random ones (`--nc-window-starts`): the
    /// windows of a 7 × 7 grid where a pattern painted inside the window alone best collapses
    /// the suspect and keeps the references each start a search of their own. 0: none.
    #[arg(id = "agnostic_window_starts", long = "agnostic-window-starts", default_value_t = DEFAULT_WINDOW_STARTS)]
    // Configs written before the option ran none.
    #[serde(default, skip_serializing_if = "crate::io::serde_compat::is_zero")]
    pub window_starts: usize,
}

impl Default for AgnosticConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl AgnosticConfig {
    /// The Neural Cleanse search these settings run.
    pub fn search(&self) -> NeuralCleanseConfig {
        NeuralCleanseConfig {
            steps: self.steps,
            references: self.references,
            neutral_weight: self.neutral_weight,
            smoothness: self.smoothness,
            restarts: self.restarts,
            restart_targets: self.restart_targets,
            threshold: self.threshold,
            mask_cell: self.mask_cell,
            window_starts: self.window_starts,
            ..NeuralCleanseConfig::default()
        }
    }

    /// The search these settings run on a `task` model. A classifier's is Neural Cleanse's
    /// original per-class search (per pixel, no smoothness, no neutrality: each class is a fixed
    /// target, so no free target can drift onto an edit that moves every model); the references
    /// then serve the calibration alone.
    pub fn search_for(&self, task: crate::task::Task) -> NeuralCleanseConfig {
        if task.is_classification() { self.class_search() } else { self.search() }
    }

    /// The per-class search these settings run on a classifier.
    pub fn class_search(&self) -> NeuralCleanseConfig {
        NeuralCleanseConfig { steps: self.steps, ..NeuralCleanseConfig::default() }
    }

    /// Whether the verdict reads the suspect's mask against the references' own.
    pub fn calibrated(&self) -> bool {
        self.calibrate && self.references >= 2
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.ratio > 1.0 && self.ratio.is_finite()) {
            return Err(Error::invalid("input-agnostic reversal ratio", format!("{} (must be > 1)", self.ratio)));
        }
        if !(self.quality_slope >= 0.0 && self.quality_slope.is_finite() && self.quality_knee >= 1.0 && self.quality_knee.is_finite()) {
            return Err(Error::invalid(
                "input-agnostic reversal quality slope / knee",
                format!("{} / {} (slope ≥ 0, knee ≥ 1)", self.quality_slope, self.quality_knee),
            ));
        }
        if self.references == 0 {
            return Err(Error::invalid("input-agnostic reversal references", "0 (the search needs at least one reference model)"));
        }
        self.search().validate()
    }
}

fn default_quality_knee() -> f64 {
    DEFAULT_QUALITY_KNEE
}

/// The verdict's settings (ratio, quality slope and knee) as they stand in cache keys, whatever
/// their values: they turn a scan's measured signals into its score and decision
/// ([`AgnosticConfig::decide`]), so a scan cached under other verdict settings is re-decided
/// rather than run again. Fixed at the values the test bed's cached scans were keyed under.
const KEYED_VERDICT: (f64, f64, f64) = (1.5, 1.25, 3.0);

/// A verdict on a cached scan's signals under the current settings (a detector whose threshold
/// is left out of its cache key re-decides its scans with it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The detector's score (here: ln(the references' mask / the suspect's), less what their
    /// weaker quality explains).
    pub score: f64,
    /// Where the score is flagged from (here: ln of the ratio).
    pub threshold: f64,
    /// The score oriented so that larger is more suspicious.
    pub suspicion: f64,
    pub backdoored: bool,
}

impl AgnosticConfig {
    /// These settings with the verdict's own fixed ([`KEYED_VERDICT`]): what a scan's cache key
    /// reads.
    pub fn keyed(&self) -> AgnosticConfig {
        let (ratio, quality_slope, quality_knee) = KEYED_VERDICT;
        AgnosticConfig { ratio, quality_slope, quality_knee, ..self.clone() }
    }

    /// The calibrated verdict on a scan's measured signals (`log_ratio`, `reference_error_deg`,
    /// `suspect_error_deg`), under these settings; `None` when one is missing (an uncalibrated
    /// scan, or one from before the quality correction).
    pub fn decide(&self, signals: &std::collections::BTreeMap<String, f64>) -> Option<Verdict> {
        let (log_ratio, reference_error, suspect_error) = (signals.get("log_ratio")?, signals.get("reference_error_deg")?, signals.get("suspect_error_deg")?);
        let score = quality_adjusted(*log_ratio, *reference_error, *suspect_error, self.quality_slope, self.quality_knee);
        let threshold = self.ratio.ln();
        Some(Verdict { score, threshold, suspicion: score, backdoored: score >= threshold })
    }
}

/// The log of the references' mask over the suspect's, less what the references' weaker
/// quality alone accounts for: `slope · max(0, ln(reference error / suspect error) − ln knee)`.
pub fn quality_adjusted(log_ratio: f64, reference_error: f64, suspect_error: f64, slope: f64, knee: f64) -> f64 {
    log_ratio - slope * (quality_log_ratio(reference_error, suspect_error) - knee.ln()).max(0.0)
}

/// ln(reference error / suspect error): how much weaker the references are.
pub fn quality_log_ratio(reference_error: f64, suspect_error: f64) -> f64 {
    (reference_error.max(1e-9) / suspect_error.max(1e-9)).ln()
}

#[derive(Debug, Clone)]
pub struct Agnostic {
    pub config: AgnosticConfig,
}

/// A reference model's score under the search, as cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ReferenceScore {
    mask_share: f64,
    succeeded: bool,
}

impl Agnostic {
    /// Each of `references`' score: its best successful mask share (1 when none succeeded), with
    /// the neutrality term against the other references. Cached beside the references.
    pub fn reference_scores(&self, references: &References, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Vec<f64>> {
        let c = &self.config;
        let reference_config = ReferenceConfig::new(c.references);
        let key = References::cache_key(suspect, clean, &reference_config);
        let nc = NeuralCleanse { config: c.search_for(suspect.task) };
        let mut scores = Vec::with_capacity(references.models.len());
        for (k, model) in references.models.iter().enumerate() {
            let path = References::cache_dir().join(format!("{}-{key}-agnostic-{}.json", suspect.task, short_hash(&(&nc.config, seed, k))));
            let entry = cache_entry_lock(&path);
            let _computing = entry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let score = match read_json::<ReferenceScore>(&path) {
                Ok(score) => score,
                Err(_) => {
                    let others: Vec<_> = references.models.iter().enumerate().filter(|&(j, _)| j != k).map(|(_, m)| m.clone()).collect();
                    tracing::info!(reference = k, "scoring a reference model with the input-agnostic reversal");
                    let reference = suspect.with_model(model.clone());
                    let score = if suspect.task.is_classification() {
                        // The smallest successful class mask, as the suspect is scored.
                        let classes = nc.reverse_classes(&reference, clean, seed, device)?;
                        let smallest = classes.iter().filter(|r| r.succeeded).map(|r| r.mask_share).reduce(f64::min);
                        ReferenceScore { mask_share: smallest.unwrap_or(1.0), succeeded: smallest.is_some() }
                    } else {
                        let r = nc.reverse_against(&reference, clean, &others, seed, device)?;
                        ReferenceScore { mask_share: r.mask_share, succeeded: r.succeeded }
                    };
                    write_json(&path, &score)?;
                    score
                }
            };
            scores.push(if score.succeeded { score.mask_share } else { 1.0 });
        }
        Ok(scores)
    }
}

impl Detector for Agnostic {
    fn name(&self) -> &'static str {
        "agnostic"
    }

    fn detect(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Finding> {
        self.config.validate()?;
        let started = std::time::Instant::now();
        let mut finding = NeuralCleanse { config: self.config.search_for(suspect.task) }.finding("agnostic", suspect, clean, seed, device)?;
        // The search's own score, before any calibration: the successful mask's share, 1 when
        // no mask succeeded (a classifier's: its smallest class mask's, beside the anomaly index
        // that scores the per-class search).
        let mask_score = if suspect.task.is_classification() {
            finding.detection.signals.get("mask_share").copied().unwrap_or(1.0)
        } else {
            finding.detection.score
        };
        finding.detection.signals.insert("mask_score".into(), mask_score);
        if self.config.calibrated() {
            let c = &self.config;
            let references = References::get(suspect, clean, &ReferenceConfig::new(c.references), reference_seed(seed), device)?;
            let theirs = self.reference_scores(&references, suspect, clean, seed, device)?;
            let geometric = (theirs.iter().map(|v| v.max(1e-9).ln()).sum::<f64>() / theirs.len() as f64).exp();
            let own = mask_score.max(1e-9);
            let log_ratio = geometric.ln() - own.ln();
            // Both errors on the held-out fifth of the clean set, where the references are measured.
            let reference_error = references.heldout_error_deg();
            let batch = c.search_for(suspect.task).batch_size;
            let suspect_error = evaluate(&suspect.model, suspect.task, &heldout_part(clean.data()), batch)?.mean_deg;
            let signals = &mut finding.detection.signals;
            signals.insert("reference_mask_share".into(), geometric);
            signals.insert("log_ratio".into(), log_ratio);
            signals.insert("reference_error_deg".into(), reference_error);
            signals.insert("suspect_error_deg".into(), suspect_error);
            signals.insert("quality_log_ratio".into(), quality_log_ratio(reference_error, suspect_error));
            let verdict = c.decide(signals).ok_or_else(|| Error::Numerical("the calibrated verdict's signals are missing".into()))?;
            let score = verdict.score;
            signals.insert("score".into(), score);
            finding.rows.push((
                format!("the same search on each of the {} references, against the others", theirs.len()),
                format!(
                    "mask shares {} (geometric mean {geometric:.4}); log of theirs over the suspect's: {log_ratio:+.2} (positive: the suspect needs a smaller mask than benign models)",
                    theirs.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(", ")
                ),
            ));
            finding.rows.push((
                "held-out error of the references / of the suspect".into(),
                format!("{reference_error:.2} / {suspect_error:.2} (the references' masks are scaled to the suspect's quality: score {score:+.2})"),
            ));
            let d = &mut finding.detection;
            if let Some(fields) = d.details.as_object_mut() {
                fields.insert("reference_mask_shares".into(), serde_json::json!(theirs));
            }
            // The verdict moves to the calibrated score: the log of the references' mask over
            // the suspect's, against the log of the ratio.
            // Its time includes the references' own scores, computed by the first scan of a task
            // and clean set and read from the cache afterwards.
            d.elapsed_s = started.elapsed().as_secs_f64();
            let decided = super::Detection::decide("agnostic", score, verdict.threshold, false, d.elapsed_s, serde_json::Value::Null);
            (d.score, d.threshold, d.margin, d.suspicion, d.backdoored) = (decided.score, decided.threshold, decided.margin, decided.suspicion, decided.backdoored);
        }
        finding.config = serde_json::to_value(&self.config).map_err(|e| Error::Numerical(e.to_string()))?;
        let c = &self.config;
        let search = if suspect.task.is_classification() {
            "the smallest of the masks that send 99% of the clean images to each class".to_string()
        } else {
            format!(
                "one mask that collapses the suspect while keeping {} reference models' outputs (neutrality weight {}, smoothness {})",
                c.references, c.neutral_weight, c.smoothness
            )
        };
        finding.rule = if suspect.task.is_classification() && !c.calibrated() {
            // Uncalibrated, a classifier is decided as Neural Cleanse decides it.
            finding.rule
        } else if c.calibrated() {
            format!(
                "score = ln(the references' mask share / the suspect's) − {} · max(0, ln(the references' held-out error / the suspect's) − ln {}), each mask the share of the image covered by {search}; backdoored iff score ≥ ln {}",
                c.quality_slope, c.quality_knee, c.ratio
            )
        } else {
            format!("score = share of the image covered by {search}; backdoored iff score < threshold")
        };
        Ok(finding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quality_correction_starts_at_the_knee_and_grows_with_the_slope() {
        // References up to 3 × the suspect's error: no correction.
        assert_eq!(quality_adjusted(0.7, 9.0, 3.0, 1.25, 3.0), 0.7);
        assert_eq!(quality_adjusted(0.7, 6.0, 3.0, 1.25, 3.0), 0.7);
        // 6 × the suspect's error: 1.25 · ln 2 less.
        let adjusted = quality_adjusted(0.7, 18.0, 3.0, 1.25, 3.0);
        assert!((adjusted - (0.7 - 1.25 * 2f64.ln())).abs() < 1e-12);
        // Slope 0: the plain log ratio.
        assert_eq!(quality_adjusted(0.7, 18.0, 3.0, 0.0, 3.0), 0.7);
    }

    #[test]
    fn a_scans_signals_are_decided_under_the_current_verdict_settings_and_keyed_without_them() {
        let signals: std::collections::BTreeMap<String, f64> =
            [("log_ratio", 0.9), ("reference_error_deg", 18.0), ("suspect_error_deg", 3.0)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let c = AgnosticConfig::default();
        let v = c.decide(&signals).unwrap();
        assert_eq!(v.score, quality_adjusted(0.9, 18.0, 3.0, c.quality_slope, c.quality_knee));
        assert_eq!((v.threshold, v.backdoored), (c.ratio.ln(), v.score >= c.ratio.ln()));
        let strict = AgnosticConfig { ratio: 3.0, quality_slope: 0.0, ..c.clone() };
        assert_eq!(strict.decide(&signals), Some(Verdict { score: 0.9, threshold: 3f64.ln(), suspicion: 0.9, backdoored: false }));
        assert_eq!(strict.keyed(), c.keyed(), "the verdict's settings are not in the key");
        assert_ne!(AgnosticConfig { steps: 10, ..c.clone() }.keyed(), c.keyed());
        let mut missing = signals.clone();
        missing.remove("suspect_error_deg");
        assert_eq!(c.decide(&missing), None);
    }
}
