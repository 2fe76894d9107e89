//! Neural Cleanse in its original form, for classifiers: one mask and pattern per class, each
//! optimised (cross-entropy to the class, with the original's cost schedule) until 99% of the
//! stamped clean images reach the class. A backdoor's target class needs a far smaller mask than
//! the others: the model is flagged when the smallest mask lies more than two median absolute
//! deviations below the classes' median (the anomaly index).

use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::NeuralCleanse;
use super::search::{NcReversal, Start, restart_seed};
use crate::defenses::{CleanSet, Detection, Figure, Finding, Suspect};
use crate::error::{Error, Result};
use crate::figures::reversed::{map_figure, reversal_figure};
use crate::parallel::{map_in_pools, workers_for};

/// The median absolute deviation's consistency constant: with it, the MAD of normal data
/// estimates their standard deviation.
const MAD_CONSISTENCY: f64 = 1.4826;

/// One class's reversal, as the report lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMask {
    pub class: usize,
    /// The mask's share of the image: its L1 norm over the image's area; 1 when no trigger
    /// reached the success rate (the original keeps an infinite norm then).
    pub mask_share: f64,
    pub succeeded: bool,
    /// Share of the whole clean set that the trigger sends to the class.
    pub clean_set_success: f64,
    pub steps: usize,
}

/// The anomaly index of the smallest of `norms`: how far it lies below their median, in units of
/// the consistency-scaled median absolute deviation (0 when it is not below the median; infinite
/// when the deviation is 0 and it is). Its index comes with it.
pub fn smallest_anomaly(norms: &[f64]) -> Option<(usize, f64)> {
    let (smallest, &min) = norms.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1))?;
    let middle = median(norms.to_vec());
    let mad = MAD_CONSISTENCY * median(norms.iter().map(|v| (v - middle).abs()).collect());
    let below = (middle - min).max(0.0);
    let index = if below == 0.0 {
        0.0
    } else if mad > 0.0 {
        below / mad
    } else {
        f64::INFINITY
    };
    Some((smallest, index))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl NeuralCleanse {
    /// Every class's search, side by side where the pool has threads for them. The settings for
    /// a free regression target (restarts, window starts, neutrality, reference models) do not
    /// apply: each class is searched once, from a random start.
    pub fn reverse_classes(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Vec<NcReversal>> {
        let c = &self.config;
        c.validate()?;
        clean.check_for(suspect, c.batch_size)?;
        let classes = suspect.task.classes().ok_or_else(|| Error::invalid("task", format!("{}: not a classifier", suspect.task)))?;
        let targets: Vec<Vec<f32>> = (0..classes).map(|k| (0..classes).map(|j| if j == k { 1.0 } else { 0.0 }).collect()).collect();
        map_in_pools(classes, workers_for(classes), |k| {
            self.optimise(suspect, clean, Start::Random(&targets[k]), restart_seed(seed, k as u64), None, None, device)
        })
    }

    /// The original's detection on a classifier: the classes' masks, the smallest one's anomaly
    /// index, and its trigger for unlearning.
    pub(super) fn class_finding(&self, name: &str, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Finding> {
        let started = Instant::now();
        let reversals = self.reverse_classes(suspect, clean, seed, device)?;
        let c = &self.config;
        let masks: Vec<ClassMask> = reversals
            .iter()
            .enumerate()
            .map(|(class, r)| ClassMask { class, mask_share: if r.succeeded { r.mask_share } else { 1.0 }, succeeded: r.succeeded, clean_set_success: r.clean_set_success, steps: r.steps })
            .collect();
        let norms: Vec<f64> = masks.iter().map(|m| m.mask_share).collect();
        let (target, index) = smallest_anomaly(&norms).ok_or_else(|| Error::Numerical("Neural Cleanse searched no class".into()))?;
        let details = serde_json::json!({
            "anomaly_index": index,
            "estimated_target_class": target,
            "mask_share": norms[target],
            "median_mask_share": median(norms.clone()),
            "classes": masks,
        });
        let mut detection = Detection::decide(name, index, c.anomaly_threshold, false, started.elapsed().as_secs_f64(), details);
        detection.set_signals([("score", index), ("anomaly_index", index), ("mask_share", norms[target])]);

        let best = reversals.into_iter().nth(target).expect("the target indexes the classes");
        let shown: Vec<usize> = (0..clean.len().min(8)).collect();
        let (x, _) = clean.batch(&shown, device);
        let originals = crate::data::to_images(x.clone())?;
        let stamped = crate::data::to_images(best.trigger.stamp(x))?;
        let figures = vec![
            Figure {
                file: "reversed.png".into(),
                caption: format!("Rows: clean images, the same stamped with the smallest class mask's trigger (class {target}), and the difference (white = 0.5)."),
                image: reversal_figure(&originals, &stamped, 0.5)?,
            },
            Figure {
                file: "mask.png".into(),
                caption: format!("The mask of class {target}, the smallest of the classes' (white = 1)."),
                image: map_figure(&best.trigger.mask_values()?, suspect.image_size())?,
            },
        ];
        let shares = masks.iter().map(|m| if m.succeeded { format!("{}: {:.4}", m.class, m.mask_share) } else { format!("{}: failed", m.class) }).collect::<Vec<_>>().join(", ");
        let rows = vec![
            ("anomaly index of the smallest mask".into(), format!("{index:.2} (class {target}; flagged above {})", c.anomaly_threshold)),
            ("mask share per class (L1 / area)".into(), shares),
            ("success rate demanded".into(), format!("{:.0}% of stamped clean images in the class", 100.0 * c.class_success)),
        ];
        Ok(Finding {
            detection,
            config: serde_json::to_value(c).map_err(|e| Error::Numerical(e.to_string()))?,
            seed,
            rule: "score = anomaly index of the smallest class mask (distance below the median in MADs × 1.4826); backdoored iff score > threshold".into(),
            rows,
            figures,
            trigger: Some(std::sync::Arc::new(best.trigger.to_device(device))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anomaly_index_measures_the_smallest_norm_below_the_median_in_mads() {
        // Median 10, deviations 1, 0, 0, 1, 6: MAD 1 × 1.4826; the smallest, 4, is 6 below.
        let (class, index) = smallest_anomaly(&[9.0, 10.0, 10.0, 11.0, 4.0]).unwrap();
        assert_eq!(class, 4);
        assert!((index - 6.0 / 1.4826).abs() < 1e-9);
        // Equal norms have no outlier; one lone smaller norm among equal ones is infinitely far.
        assert_eq!(smallest_anomaly(&[3.0, 3.0, 3.0]).unwrap().1, 0.0);
        assert_eq!(smallest_anomaly(&[3.0, 3.0, 3.0, 1.0]).unwrap().1, f64::INFINITY);
        assert!(smallest_anomaly(&[]).is_none());
    }
}
