//! The combined verdict of several detectors' signals, as the test bed measures it.
//!
//! Each signal is standardised against the benign models of the calibration half: its logarithm,
//! minus the benign models' mean, over their standard deviation, signed so that positive is
//! suspicious. The combined score is the largest of them (an OR of one-sided tests: a model is as
//! suspicious as its most anomalous signal), and the model is flagged when it exceeds a threshold
//! fitted on the calibration half. The standardisation sees benign models only, so no attack
//! is learned from; the threshold is fitted once with every attack and once without each attack
//! in turn (leave-one-attack-out), and both are reported on the test half.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::scoring::{Confusion, roc_auc};
use super::{BenchConfig, DetectionRecord, Half, ModelRecord};
use crate::defenses::DetectorKind;
use crate::task::Task;

/// The signals the verdict combines on regression models, each suspicious when low: the
/// input-agnostic reversal's successful mask share (1 when no mask succeeded), for triggers a
/// mask expresses, and the spread ratio under the best small warp, for warp triggers, which no
/// mask expresses. Neuron noise stays out: on the test bed it ranked benign models above
/// backdoored ones (docs/testbed.md), and it reads nothing from an ONNX export.
pub const VERDICT_SIGNALS: [(DetectorKind, &str); 2] = [(DetectorKind::Agnostic, "mask_score"), (DetectorKind::Warp, "spread_ratio")];

/// The signals the verdict combines on classifiers, each suspicious when low: the smallest of
/// the input-agnostic reversal's per-class masks (compared here across models, where NC's
/// anomaly index compares it across classes and the scan's verdict with reference models), and
/// how close DRMGuard's generator came to its verdict under the classification objective.
pub const CLASSIFIER_VERDICT_SIGNALS: [(DetectorKind, &str); 2] = [(DetectorKind::Agnostic, "mask_score"), (DetectorKind::Drmguard, "closeness")];

/// The signals the verdict combines on models of `task`.
pub fn verdict_signals(task: Task) -> &'static [(DetectorKind, &'static str)] {
    if task.is_classification() { &CLASSIFIER_VERDICT_SIGNALS } else { &VERDICT_SIGNALS }
}

/// The smallest standard deviation (of a signal's logarithm) a standardisation divides by: with
/// four benign models the sample's own may be near zero by chance.
const MIN_LOG_STD: f64 = 0.1;

/// One signal's benign statistics on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalCalibration {
    pub detector: DetectorKind,
    pub signal: String,
    pub mean_log: f64,
    pub std_log: f64,
    pub benign_models: usize,
}

/// A model's standardised signals and combined score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVerdict {
    pub model: String,
    pub half: Half,
    pub backdoored: bool,
    pub attack: Option<String>,
    /// `detector.signal` → standardised value (positive = suspicious).
    pub z: BTreeMap<String, f64>,
    pub score: f64,
}

/// The verdict on one task and attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictSummary {
    pub task: Task,
    pub attack: String,
    /// Threshold fitted on the calibration half, every attack included.
    pub threshold: f64,
    pub test: Confusion,
    pub test_auc: Option<f64>,
    pub calibration: Confusion,
    pub calibration_auc: Option<f64>,
    /// Threshold fitted on the calibration half without this attack's models, and the test
    /// half's counts at it.
    pub held_out_threshold: f64,
    pub held_out_test: Confusion,
}

/// Everything the verdict reports for one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskVerdict {
    pub task: Task,
    pub calibrations: Vec<SignalCalibration>,
    pub models: Vec<ModelVerdict>,
    pub summaries: Vec<VerdictSummary>,
}

/// The combined verdict of every task whose detectors include all of its signals
/// ([`verdict_signals`]; none where one was not run). A model is scored on the signals it has (a
/// scan that failed leaves its signal out); a signal is standardised only where the calibration
/// half has at least two benign models with it.
pub fn combine(c: &BenchConfig, models: &[ModelRecord], detections: &[DetectionRecord]) -> Vec<TaskVerdict> {
    let value = |model: &str, detector: DetectorKind, signal: &str| {
        detections.iter().find(|d| d.model == model && d.detector == detector).and_then(|d| d.signals.get(signal).copied()).filter(|v| *v > 0.0 && v.is_finite())
    };
    let mut out = Vec::new();
    for &task in &c.tasks {
        let signals = verdict_signals(task);
        if !signals.iter().all(|(d, _)| c.detectors.contains(d)) {
            continue;
        }
        // Usable models, with the log of each signal they have.
        let counted: Vec<(&ModelRecord, Vec<Option<f64>>)> = models
            .iter()
            .filter(|m| m.task == task && m.standing.counts())
            .filter(|m| m.attack.as_ref().is_none_or(|a| c.attacks.contains(a)))
            .map(|m| (m, signals.iter().map(|&(d, s)| value(&m.id, d, s).map(f64::ln)).collect()))
            .collect();
        let calibrations: Vec<Option<SignalCalibration>> = signals
            .iter()
            .enumerate()
            .map(|(i, &(detector, signal))| {
                let logs: Vec<f64> = counted.iter().filter(|(m, _)| m.attack.is_none() && m.half == Half::Calibration).filter_map(|(_, v)| v[i]).collect();
                if logs.len() < 2 {
                    return None;
                }
                let mean = logs.iter().sum::<f64>() / logs.len() as f64;
                let var = logs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (logs.len() - 1) as f64;
                Some(SignalCalibration { detector, signal: signal.to_string(), mean_log: mean, std_log: var.sqrt().max(MIN_LOG_STD), benign_models: logs.len() })
            })
            .collect();
        if calibrations.iter().all(Option::is_none) {
            continue;
        }
        let verdicts: Vec<ModelVerdict> = counted
            .iter()
            .filter_map(|(m, logs)| {
                let z: BTreeMap<String, f64> = calibrations
                    .iter()
                    .zip(logs)
                    .filter_map(|(k, x)| Some((k.as_ref()?, (*x)?)))
                    .map(|(k, x)| (format!("{}.{}", k.detector, k.signal), (k.mean_log - x) / k.std_log))
                    .collect();
                let score = z.values().cloned().reduce(f64::max)?;
                Some(ModelVerdict { model: m.id.clone(), half: m.half, backdoored: m.attack.is_some(), attack: m.attack.clone(), z, score })
            })
            .collect();
        let calibrations: Vec<SignalCalibration> = calibrations.into_iter().flatten().collect();
        let threshold = fit_threshold(verdicts.iter().filter(|v| v.half == Half::Calibration));
        let mut summaries = Vec::new();
        for attack in &c.attacks {
            let of = |half: Half| -> Vec<&ModelVerdict> {
                verdicts.iter().filter(|v| v.half == half && (v.attack.is_none() || v.attack.as_ref() == Some(attack))).collect()
            };
            let (test, calibration) = (of(Half::Test), of(Half::Calibration));
            if !test.iter().chain(&calibration).any(|v| v.backdoored) {
                continue;
            }
            let held_out_threshold = fit_threshold(verdicts.iter().filter(|v| v.half == Half::Calibration && v.attack.as_ref() != Some(attack)));
            summaries.push(VerdictSummary {
                task,
                attack: attack.clone(),
                threshold,
                test: confusion(&test, threshold),
                test_auc: auc(&test),
                calibration: confusion(&calibration, threshold),
                calibration_auc: auc(&calibration),
                held_out_threshold,
                held_out_test: confusion(&test, held_out_threshold),
            });
        }
        out.push(TaskVerdict { task, calibrations, models: verdicts, summaries });
    }
    out
}

fn confusion(models: &[&ModelVerdict], threshold: f64) -> Confusion {
    Confusion::count(models.iter().map(|v| (v.backdoored, v.score > threshold)))
}

fn auc(models: &[&ModelVerdict]) -> Option<f64> {
    let scores = |backdoored: bool| models.iter().filter(|v| v.backdoored == backdoored).map(|v| v.score).collect::<Vec<_>>();
    roc_auc(&scores(true), &scores(false))
}

/// The threshold with the best accuracy on `models`: a midpoint between consecutive scores, the
/// larger one on ties (fewer false alarms). Without backdoored models, just above every benign
/// score.
fn fit_threshold<'a>(models: impl Iterator<Item = &'a ModelVerdict>) -> f64 {
    let models: Vec<&ModelVerdict> = models.collect();
    let mut scores: Vec<f64> = models.iter().map(|v| v.score).collect();
    scores.sort_by(f64::total_cmp);
    scores.dedup();
    let Some(&top) = scores.last() else { return 0.0 };
    let mut candidates: Vec<f64> = scores.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    candidates.push(top + 0.5);
    candidates.insert(0, scores[0] - 0.5);
    let accuracy = |t: f64| models.iter().filter(|v| v.backdoored == (v.score > t)).count();
    let mut best = (0usize, f64::NEG_INFINITY);
    for t in candidates {
        let a = accuracy(t);
        if a >= best.0 {
            best = (a, t);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(score: f64, backdoored: bool) -> ModelVerdict {
        ModelVerdict { model: String::new(), half: Half::Calibration, backdoored, attack: backdoored.then(|| "badnets".into()), z: BTreeMap::new(), score }
    }

    fn record(id: &str, attack: Option<&str>, half: Half, standing: super::super::Standing) -> ModelRecord {
        ModelRecord {
            id: id.into(),
            task: Task::Gaze,
            attack: attack.map(str::to_string),
            seed: 0,
            half,
            standing,
            target: None,
            path: Default::default(),
            train_s: 0.0,
            errors: super::super::Errors { clean_deg: 3.0, mean_predictor_deg: 22.0, ae_deg: None, dae_deg: None },
        }
    }

    fn scans(model: &str, mask_score: f64, spread_ratio: f64) -> [DetectionRecord; 2] {
        let scan = |detector, signal: &str, v: f64| DetectionRecord {
            model: model.into(),
            detector,
            backdoored: false,
            score: v,
            suspicion: -v,
            threshold: 0.0,
            elapsed_s: 0.0,
            signals: [(signal.to_string(), v)].into(),
        };
        [scan(DetectorKind::Agnostic, "mask_score", mask_score), scan(DetectorKind::Warp, "spread_ratio", spread_ratio)]
    }

    #[test]
    fn the_verdict_standardises_against_benign_calibration_models_and_keeps_unusable_ones_out() {
        use super::super::{BenchConfig, BenchProfile, Standing};
        let mut c = BenchConfig::new(BenchProfile::Small);
        c.tasks = vec![Task::Gaze];
        c.attacks = vec!["badnets".into()];
        let (cal, test) = (Half::Calibration, Half::Test);
        let models = [
            record("b0", None, cal, Standing::Usable),
            record("b2", None, cal, Standing::Usable),
            record("b1", None, test, Standing::Usable),
            record("p0", Some("badnets"), cal, Standing::Usable),
            record("p1", Some("badnets"), test, Standing::Usable),
            record("p3", Some("badnets"), test, Standing::DidNotTake),
            record("b3", None, test, Standing::Usable),
        ];
        let detections: Vec<DetectionRecord> = [
            scans("b0", 0.05, 0.35),
            scans("b2", 0.07, 0.36),
            scans("b1", 0.06, 0.34),
            scans("p0", 0.015, 0.30),
            scans("p1", 0.012, 0.34),
            scans("p3", 0.001, 0.01),
        ]
        .into_iter()
        .flatten()
        // b3's warp scan failed: it is missing.
        .chain([scans("b3", 0.08, 0.0)[0].clone()])
        .collect();
        let v = combine(&c, &models, &detections);
        assert_eq!(v.len(), 1);
        let v = &v[0];
        assert_eq!(v.calibrations[0].benign_models, 2, "only the calibration half's benign models standardise");
        let mean = (0.05f64.ln() + 0.07f64.ln()) / 2.0;
        assert!((v.calibrations[0].mean_log - mean).abs() < 1e-12);
        assert!(v.models.iter().all(|m| m.model != "p3"), "a backdoor that did not take is not counted");
        let score = |id: &str| v.models.iter().find(|m| m.model == id).unwrap().score;
        assert!(score("p1") > score("b1") && score("p0") > score("b0"), "small masks are suspicious");
        let b3 = v.models.iter().find(|m| m.model == "b3").unwrap();
        assert_eq!(b3.z.len(), 1, "a model is scored on the signals it has: {:?}", b3.z);
        let s = &v.summaries[0];
        assert_eq!((s.test.tp, s.test.fp, s.test.fn_, s.test.tn), (1, 0, 0, 2));
        assert_eq!(s.test_auc, Some(1.0));
        // Without the attack the calibration half has benign models only: the threshold sits
        // above them.
        assert!(s.held_out_threshold > score("b0").max(score("b2")));
        // A run without one of the signals' detectors gives no verdict.
        c.detectors.retain(|d| *d != DetectorKind::Warp);
        assert!(combine(&c, &models, &detections).is_empty());
    }

    #[test]
    fn the_threshold_separates_where_it_can_and_prefers_fewer_false_alarms() {
        let models = [verdict(0.0, false), verdict(1.0, false), verdict(4.0, true), verdict(5.0, true)];
        assert_eq!(fit_threshold(models.iter()), 2.5);
        // Overlapping: one error either way; the larger threshold wins the tie.
        let models = [verdict(0.0, false), verdict(3.0, false), verdict(2.0, true), verdict(5.0, true)];
        assert_eq!(fit_threshold(models.iter()), 4.0);
        // Benign models only: above them all.
        let models = [verdict(0.0, false), verdict(1.0, false)];
        assert!(fit_threshold(models.iter()) > 1.0);
    }
}
