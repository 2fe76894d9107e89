//! The tables' numbers: each detector per task and attack, each signal alone, each mitigator.



use crate::defenses::DetectorKind;
use crate::task::Task;
use super::scoring::{Confusion, roc_auc};
use super::*;

pub(super) fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values.into_iter().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// The scans by `detector` of the usable models of `task`, `class` (`None`: benign) and `half`.
pub(super) fn counted_scans<'a>(
    models: &[ModelRecord],
    detections: &'a [DetectionRecord],
    task: Task,
    class: Option<&str>,
    half: Half,
    detector: DetectorKind,
) -> Vec<&'a DetectionRecord> {
    let ids: Vec<&str> = models
        .iter()
        .filter(|m| m.task == task && m.attack.as_deref() == class && m.half == half && m.standing.counts())
        .map(|m| m.id.as_str())
        .collect();
    detections.iter().filter(|d| d.detector == detector && ids.contains(&d.model.as_str())).collect()
}

pub(super) fn summarise_detections(c: &BenchConfig, models: &[ModelRecord], detections: &[DetectionRecord]) -> Vec<DetectionSummary> {
    let mut out = Vec::new();
    for &task in &c.tasks {
        for attack in &c.attacks {
            for &detector in &c.detectors {
                for half in [Half::Test, Half::Calibration] {
                    let of = |class: Option<&str>| counted_scans(models, detections, task, class, half, detector);
                    let (positives, negatives) = (of(Some(attack)), of(None));
                    // A class with no usable scans in this half (a partial cache, or models that
                    // did not learn) gives no row, not a row of zeros.
                    if positives.is_empty() || negatives.is_empty() {
                        continue;
                    }
                    let confusion = Confusion::count(
                        positives.iter().map(|d| (true, d.backdoored)).chain(negatives.iter().map(|d| (false, d.backdoored))),
                    );
                    let scores = |ds: &[&DetectionRecord]| ds.iter().map(|d| d.suspicion).collect::<Vec<_>>();
                    out.push(DetectionSummary {
                        task,
                        attack: attack.clone(),
                        detector,
                        half,
                        accuracy: confusion.accuracy(),
                        confusion,
                        roc_auc: roc_auc(&scores(&positives), &scores(&negatives)),
                        mean_seconds: mean(positives.iter().chain(&negatives).map(|d| d.elapsed_s)),
                    });
                }
            }
        }
    }
    out
}

pub(super) fn summarise_signals(c: &BenchConfig, models: &[ModelRecord], detections: &[DetectionRecord]) -> Vec<SignalSummary> {
    let mut out = Vec::new();
    for &task in &c.tasks {
        for attack in &c.attacks {
            for &detector in &c.detectors {
                let of = |class: Option<&str>, half: Half| counted_scans(models, detections, task, class, half, detector);
                let halves = [Half::Calibration, Half::Test].map(|h| (of(Some(attack), h), of(None, h)));
                let mut names: Vec<&String> = halves.iter().flat_map(|(p, n)| p.iter().chain(n)).flat_map(|d| d.signals.keys()).collect();
                names.sort();
                names.dedup();
                for name in names {
                    let values = |ds: &[&DetectionRecord]| ds.iter().filter_map(|d| d.signals.get(name).copied()).collect::<Vec<f64>>();
                    let auc = |(p, n): &(Vec<&DetectionRecord>, Vec<&DetectionRecord>)| roc_auc(&values(p), &values(n));
                    let count = |(p, n): &(Vec<&DetectionRecord>, Vec<&DetectionRecord>)| values(p).len() + values(n).len();
                    let (calibration, test) = (auc(&halves[0]), auc(&halves[1]));
                    let high_is_suspicious = calibration.is_none_or(|a| a >= 0.5);
                    let oriented = |a: Option<f64>| a.map(|a| if high_is_suspicious { a } else { 1.0 - a });
                    out.push(SignalSummary {
                        task,
                        attack: attack.clone(),
                        detector,
                        signal: name.clone(),
                        high_is_suspicious,
                        calibration_auc: oriented(calibration),
                        test_auc: oriented(test),
                        calibration_models: count(&halves[0]),
                        test_models: count(&halves[1]),
                    });
                }
            }
        }
    }
    out
}

pub(super) fn summarise_mitigations(c: &BenchConfig, models: &[ModelRecord], mitigations: &[MitigationRecord]) -> Vec<MitigationSummary> {
    let mut out = Vec::new();
    for &task in &c.tasks {
        for attack in &c.attacks {
            let ids: Vec<&str> = models.iter().filter(|m| m.task == task && m.attack.as_ref() == Some(attack)).map(|m| m.id.as_str()).collect();
            for &mitigator in &c.mitigators {
                let rs: Vec<&MitigationRecord> = mitigations.iter().filter(|r| r.mitigator == mitigator && ids.contains(&r.model.as_str())).collect();
                // A mean over no repairs is no result (`--mitigated-per-class 0`): leave the row out.
                if rs.is_empty() {
                    continue;
                }
                out.push(MitigationSummary {
                    task,
                    attack: attack.clone(),
                    mitigator,
                    models: rs.len(),
                    clean_before_deg: mean(rs.iter().map(|r| r.before.clean_deg)),
                    clean_after_deg: mean(rs.iter().map(|r| r.after.clean_deg)),
                    ae_before_deg: mean(rs.iter().filter_map(|r| r.before.ae_deg)),
                    ae_after_deg: mean(rs.iter().filter_map(|r| r.after.ae_deg)),
                    dae_before_deg: mean(rs.iter().filter_map(|r| r.before.dae_deg)),
                    dae_after_deg: mean(rs.iter().filter_map(|r| r.after.dae_deg)),
                    mean_seconds: mean(rs.iter().map(|r| r.elapsed_s)),
                });
            }
        }
    }
    out
}
