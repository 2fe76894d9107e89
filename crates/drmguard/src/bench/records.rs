//! What a run records: the gates a model must pass, each model, scan and repair, the summaries, and `results.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::defenses::agnostic::Verdict;
use crate::defenses::{DetectorConfigs, DetectorKind, MitigatorKind};
use crate::metrics::{BackdoorErrors, TaskError};
use crate::task::Task;
use super::scoring::Confusion;
use super::*;

/// A model counts as having learned its task when its clean error is at most this share of the
/// mean predictor's.
pub const LEARNED_RATIO: f64 = 0.25;

/// A backdoor counts as having taken when its attack error is at most this, in the task's unit.
pub const TOOK_AE: f64 = 3.0;

/// A classifier counts as having learned its task at this accuracy (%) or more: its mean
/// predictor's error (90% on ten balanced classes) would let a quarter of it pass a model that
/// misses one image in five.
pub const LEARNED_ACCURACY: f64 = 85.0;

/// A classifier's backdoor counts as having taken when at least this share (%) of the triggered
/// images of other classes reach the target class.
pub const TOOK_ASR: f64 = 90.0;

/// The largest clean error and attack error with which a model of `task` counts, in the task's
/// unit (a classifier's: % misclassified, and % of triggered images missing the target).
pub fn gates(task: Task, mean_predictor: f64) -> (f64, f64) {
    if task.is_classification() {
        (100.0 - LEARNED_ACCURACY, 100.0 - TOOK_ASR)
    } else {
        (LEARNED_RATIO * mean_predictor, TOOK_AE)
    }
}

/// Which half of the seeds a model belongs to: anything fit to data (thresholds, weights) is fit
/// on the calibration half, and the tables report the test half beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Half {
    Calibration,
    Test,
}

impl Half {
    /// Even model indices calibrate, odd ones test, so both halves grow together.
    pub fn of_index(index: usize) -> Self {
        if index % 2 == 0 { Half::Calibration } else { Half::Test }
    }
}

impl std::fmt::Display for Half {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Half::Calibration => "calibration",
            Half::Test => "test",
        })
    }
}

/// Whether a model can judge a defense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// It learned its task and, if backdoored, its backdoor took.
    Usable,
    /// Clean error above [`LEARNED_RATIO`] × the mean predictor's (a classifier: accuracy below
    /// [`LEARNED_ACCURACY`]).
    DidNotLearn,
    /// Backdoored, but its attack error is above [`TOOK_AE`] (a classifier: ASR below
    /// [`TOOK_ASR`]).
    DidNotTake,
    /// Not checked: the profile's models are not meant to learn (smoke), so its tables are a
    /// schema check.
    Unchecked,
}

impl Standing {
    pub fn of(task: Task, errors: &Errors, gated: bool) -> Self {
        let (max_clean, max_ae) = gates(task, errors.mean_predictor_deg);
        if !gated {
            Standing::Unchecked
        } else if !(errors.clean_deg <= max_clean) {
            Standing::DidNotLearn
        } else if errors.ae_deg.is_some_and(|ae| !(ae <= max_ae)) {
            Standing::DidNotTake
        } else {
            Standing::Usable
        }
    }

    /// Whether the model enters the identification and ROC tables.
    pub fn counts(self) -> bool {
        matches!(self, Standing::Usable | Standing::Unchecked)
    }
}

impl std::fmt::Display for Standing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Standing::Usable => "usable",
            Standing::DidNotLearn => "did not learn",
            Standing::DidNotTake => "did not take",
            Standing::Unchecked => "unchecked",
        })
    }
}

/// One trained model of the benchmark and its errors on its test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// `TASK-CLASS-i`, e.g. `gaze-badnets-0`.
    pub id: String,
    pub task: Task,
    /// The attack, `None` for benign models.
    pub attack: Option<String>,
    pub seed: u64,
    pub half: Half,
    pub standing: Standing,
    pub target: Option<Vec<f32>>,
    pub path: PathBuf,
    pub train_s: f64,
    pub errors: Errors,
}

/// Clean error, and AE / DAE for a backdoored model (in the task's unit: degrees, or % of the side for landmarks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Errors {
    pub clean_deg: f64,
    /// The error of always predicting the mean training label, on the same test split: the bar
    /// a model must clear by far to count as having learned its task.
    pub mean_predictor_deg: f64,
    pub ae_deg: Option<f64>,
    pub dae_deg: Option<f64>,
}

impl Errors {
    pub(super) fn from(clean: &TaskError, mean_predictor: &TaskError, backdoor: Option<&BackdoorErrors>) -> Self {
        Errors {
            clean_deg: clean.mean_deg,
            mean_predictor_deg: mean_predictor.mean_deg,
            ae_deg: backdoor.map(|b| b.attack_error.mean_deg),
            dae_deg: backdoor.map(|b| b.poisoned_true_error.mean_deg),
        }
    }
}

/// One detector's verdict on one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionRecord {
    pub model: String,
    pub detector: DetectorKind,
    pub backdoored: bool,
    pub score: f64,
    pub suspicion: f64,
    pub threshold: f64,
    pub elapsed_s: f64,
    /// The detector's scalar signals (see [`Detection::signals`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub signals: std::collections::BTreeMap<String, f64>,
}

impl DetectionRecord {
    /// The record decided under `configs`' current verdict settings: a scan of the input-agnostic
    /// reversal or the warp collapse is cached under its search settings alone
    /// ([`DetectorConfigs::settings_of`]), and its score and decision follow from its signals.
    /// Other detectors' records are kept.
    pub fn redecided(mut self, configs: &DetectorConfigs) -> Self {
        if let Some(v) = redecide(configs, self.detector, &mut self.signals) {
            (self.score, self.suspicion, self.threshold, self.backdoored) = (v.score, v.suspicion, v.threshold, v.backdoored);
        }
        self
    }
}

/// The verdict on a cached scan's `signals` under `configs`, for the detectors whose threshold
/// their cache key leaves out (the input-agnostic reversal, its `score` signal updated, and the
/// warp collapse); `None` for other detectors and for scans without the signals it reads.
pub(crate) fn redecide(configs: &DetectorConfigs, detector: DetectorKind, signals: &mut std::collections::BTreeMap<String, f64>) -> Option<Verdict> {
    let verdict = match detector {
        DetectorKind::Agnostic => configs.agnostic.decide(signals)?,
        DetectorKind::Warp => return configs.warp.decide(signals),
        _ => return None,
    };
    signals.insert("score".into(), verdict.score);
    Some(verdict)
}

/// One mitigator's repair of one backdoored model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MitigationRecord {
    pub model: String,
    pub mitigator: MitigatorKind,
    pub before: Errors,
    pub after: Errors,
    pub elapsed_s: f64,
}

/// A detector on one task and attack: the attack's models against the task's benign ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionSummary {
    pub task: Task,
    pub attack: String,
    pub detector: DetectorKind,
    /// The seeds counted: a summary covers one half (models that did not learn or whose
    /// backdoor did not take are left out).
    pub half: Half,
    #[serde(flatten)]
    pub confusion: Confusion,
    pub accuracy: f64,
    pub roc_auc: Option<f64>,
    pub mean_seconds: f64,
}

/// A mitigator on one task and attack: mean errors before and after, over the attack's models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MitigationSummary {
    pub task: Task,
    pub attack: String,
    pub mitigator: MitigatorKind,
    pub models: usize,
    pub clean_before_deg: f64,
    pub clean_after_deg: f64,
    pub ae_before_deg: f64,
    pub ae_after_deg: f64,
    pub dae_before_deg: f64,
    pub dae_after_deg: f64,
    pub mean_seconds: f64,
}

/// Everything a run produced: `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResults {
    pub config: BenchConfig,
    pub drmguard_version: String,
    /// Where it ran: CPU count and the compute device.
    pub machine: String,
    pub models: Vec<ModelRecord>,
    pub detections: Vec<DetectionRecord>,
    pub mitigations: Vec<MitigationRecord>,
    pub detection_summary: Vec<DetectionSummary>,
    /// Each detector signal alone, as a score: its direction fixed on the calibration half, its
    /// ROC-AUC on each half.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signal_summary: Vec<SignalSummary>,
    pub mitigation_summary: Vec<MitigationSummary>,
    /// Wall-clock time of this run (cached steps cost nothing).
    pub elapsed_s: f64,
    /// Steps a `cached_only` run did not find in the cache (`train MODEL`, `scan MODEL DETECTOR`,
    /// `repair MODEL MITIGATOR`): the tables leave them out. Empty for a complete run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// The search diagnostic: the searches' measures of each backdoored model's true trigger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<TriggerDiagnostic>,
    /// The combined verdict of several detectors' signals, per task ([`verdict`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<verdict::TaskVerdict>,
}

/// What the searches' measures read on a backdoored model's true trigger, applied to the clean
/// set: DRMGuard's (I(f), the collapse ratios, RAV, the features' dispersion, the references'
/// contrast) and the warp test's spread ratio ([`WARP_DIAGNOSTIC`]). Where a scan's reversal ends
/// worse than this, its search missed a trigger that its objective would have rewarded. Only the
/// bench, which knows the attack, computes it; no detector sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerDiagnostic {
    pub model: String,
    pub signals: std::collections::BTreeMap<String, f64>,
}

/// The diagnostic's signal that the warp test measures on the true trigger: the outputs' spread
/// ratio under it, as `WarpCollapseSearch` scores the warp it finds.
pub const WARP_DIAGNOSTIC: &str = "warp_spread_ratio";

/// One signal of one detector, alone, on a task and attack (usable models only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalSummary {
    pub task: Task,
    pub attack: String,
    pub detector: DetectorKind,
    pub signal: String,
    /// Whether high values are the suspicious side, as the calibration half says (its ROC-AUC
    /// with high = suspicious is at least 0.5); the test half is read in that direction.
    pub high_is_suspicious: bool,
    pub calibration_auc: Option<f64>,
    pub test_auc: Option<f64>,
    /// Models behind each AUC.
    pub calibration_models: usize,
    pub test_models: usize,
}
