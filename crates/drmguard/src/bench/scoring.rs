//! Scores of a detector over many models: confusion counts, accuracy and ROC-AUC.

use serde::{Deserialize, Serialize};

/// Identification counts: positives are backdoored models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
    pub tn: usize,
}

impl Confusion {
    /// Counts from (is backdoored, was flagged) pairs.
    pub fn count(pairs: impl IntoIterator<Item = (bool, bool)>) -> Self {
        let mut c = Confusion::default();
        for (truth, flagged) in pairs {
            match (truth, flagged) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (true, false) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    pub fn accuracy(&self) -> f64 {
        let n = self.tp + self.fp + self.fn_ + self.tn;
        if n == 0 { f64::NAN } else { (self.tp + self.tn) as f64 / n as f64 }
    }
}

/// ROC-AUC of suspicion scores (larger = more suspicious): the probability that a backdoored
/// model scores above a benign one, ties counting one half (the Mann–Whitney statistic). `None`
/// without at least one model of each class.
pub fn roc_auc(backdoored: &[f64], benign: &[f64]) -> Option<f64> {
    if backdoored.is_empty() || benign.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for &p in backdoored {
        for &n in benign {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (backdoored.len() * benign.len()) as f64)
}

/// The ROC curve's points (false-positive rate, true-positive rate), from (0, 0) to (1, 1), one
/// point per distinct threshold.
pub fn roc_curve(backdoored: &[f64], benign: &[f64]) -> Vec<(f64, f64)> {
    let mut thresholds: Vec<f64> = backdoored.iter().chain(benign).copied().collect();
    thresholds.sort_by(|a, b| b.total_cmp(a));
    thresholds.dedup();
    let rate = |scores: &[f64], t: f64| scores.iter().filter(|&&s| s >= t).count() as f64 / scores.len().max(1) as f64;
    let mut points = vec![(0.0, 0.0)];
    points.extend(thresholds.iter().map(|&t| (rate(benign, t), rate(backdoored, t))));
    points.push((1.0, 1.0));
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_one_for_separated_scores_and_a_half_for_ties() {
        assert_eq!(roc_auc(&[3.0, 4.0], &[1.0, 2.0]), Some(1.0));
        assert_eq!(roc_auc(&[1.0, 2.0], &[3.0, 4.0]), Some(0.0));
        assert_eq!(roc_auc(&[1.0], &[1.0]), Some(0.5));
        assert_eq!(roc_auc(&[2.0, 0.0], &[1.0]), Some(0.5));
        assert_eq!(roc_auc(&[], &[1.0]), None);
    }

    #[test]
    fn confusion_counts_and_accuracy() {
        let c = Confusion::count([(true, true), (true, false), (false, false), (false, false)]);
        assert_eq!((c.tp, c.fp, c.fn_, c.tn), (1, 0, 1, 2));
        assert_eq!(c.accuracy(), 0.75);
    }

    #[test]
    fn roc_curve_runs_from_corner_to_corner() {
        let curve = roc_curve(&[3.0, 1.0], &[2.0]);
        assert_eq!(curve.first(), Some(&(0.0, 0.0)));
        assert_eq!(curve.last(), Some(&(1.0, 1.0)));
        assert!(curve.contains(&(0.0, 0.5)) && curve.contains(&(1.0, 0.5)));
    }
}
