//! Task errors in the task's unit ([`Task::unit`]): 3-D angular error for gaze and mean absolute
//! error for head pose, in degrees; mean point-to-point distance for landmarks, in per cent of the
//! image side; the share of misclassified images for classes, in per cent. Fields named `*_deg`
//! hold that unit.

use serde::{Deserialize, Serialize};

pub use crate::task::argmax;
use crate::task::Task;

/// Gaze (pitch, yaw) to a unit 3-D direction.
pub fn gaze_vector(pitch: f64, yaw: f64) -> [f64; 3] {
    [pitch.cos() * yaw.sin(), pitch.sin(), pitch.cos() * yaw.cos()]
}

/// Angle in degrees between two gaze directions given as (pitch, yaw).
pub fn angular_error_deg(a: &[f32], b: &[f32]) -> f64 {
    let u = gaze_vector(a[0] as f64, a[1] as f64);
    let v = gaze_vector(b[0] as f64, b[1] as f64);
    let cos = (u[0] * v[0] + u[1] * v[1] + u[2] * v[2]).clamp(-1.0, 1.0);
    cos.acos().to_degrees()
}

/// Errors of predictions against labels (both row-major `[n, d]`, in label units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// The task's headline error in its unit: mean angular error (gaze) or mean absolute error
    /// over all axes (head pose), in degrees; mean point distance (landmarks), in % of the side;
    /// misclassified images (classes), in % (100 − accuracy).
    pub mean_deg: f64,
    /// Mean absolute error per output, in the task's unit; for classes, the share of each true
    /// class's images that are misclassified (0 for a class without images).
    pub per_output_deg: Vec<f64>,
}

/// Mean Euclidean distance between the (x, y) points of two landmark vectors, in label units.
pub fn mean_point_distance(a: &[f32], b: &[f32]) -> f64 {
    let points = (a.len() / 2).max(1) as f64;
    a.chunks_exact(2).zip(b.chunks_exact(2)).map(|(p, q)| ((p[0] - q[0]) as f64).hypot((p[1] - q[1]) as f64)).sum::<f64>() / points
}

pub fn task_error(task: Task, predictions: &[f32], labels: &[f32]) -> TaskError {
    let d = task.output_dim();
    assert_eq!(predictions.len(), labels.len(), "predictions and labels differ in length");
    if task.is_classification() {
        return classification_error(d, predictions, labels);
    }
    let n = (labels.len() / d).max(1) as f64;
    let mut per_output = vec![0.0f64; d];
    let mut joint = 0.0f64;
    for (p, y) in predictions.chunks_exact(d).zip(labels.chunks_exact(d)) {
        for j in 0..d {
            per_output[j] += task.to_unit((p[j] - y[j]).abs());
        }
        if task != Task::HeadPose {
            joint += sample_error_deg(task, p, y);
        }
    }
    per_output.iter_mut().for_each(|e| *e /= n);
    let mean_deg = match task {
        Task::HeadPose => per_output.iter().sum::<f64>() / d as f64,
        _ => joint / n,
    };
    TaskError { mean_deg, per_output_deg: per_output }
}

impl TaskError {
    /// A classifier's accuracy in per cent: the complement of its error (for a backdoor's attack
    /// error, the attack success rate).
    pub fn accuracy(&self) -> f64 {
        100.0 - self.mean_deg
    }
}

fn classification_error(classes: usize, logits: &[f32], one_hot: &[f32]) -> TaskError {
    let mut wrong = vec![0usize; classes];
    let mut seen = vec![0usize; classes];
    for (p, y) in logits.chunks_exact(classes).zip(one_hot.chunks_exact(classes)) {
        let class = argmax(y);
        seen[class] += 1;
        wrong[class] += usize::from(argmax(p) != class);
    }
    let n = seen.iter().sum::<usize>().max(1) as f64;
    TaskError {
        mean_deg: 100.0 * wrong.iter().sum::<usize>() as f64 / n,
        per_output_deg: wrong.iter().zip(&seen).map(|(&w, &s)| 100.0 * w as f64 / s.max(1) as f64).collect(),
    }
}

/// One sample's error in the task's unit, by its metric (angular for gaze, mean absolute over the
/// axes for head pose, mean point distance for landmarks, 0 or 100 for classes).
pub fn sample_error_deg(task: Task, prediction: &[f32], label: &[f32]) -> f64 {
    match task {
        Task::Classification { .. } => {
            if argmax(prediction) == argmax(label) { 0.0 } else { 100.0 }
        }
        Task::Gaze => angular_error_deg(prediction, label),
        Task::Landmarks => task.units_per_label() * mean_point_distance(prediction, label),
        Task::HeadPose => {
            prediction.iter().zip(label).map(|(p, y)| ((p - y) as f64).abs().to_degrees()).sum::<f64>() / label.len().max(1) as f64
        }
    }
}

/// Share of the predictions (row-major `[n, d]`) within `tolerance_deg` of `target`: a
/// regression model's "attack success rate" towards a target vector.
pub fn share_within(task: Task, predictions: &[f32], target: &[f32], tolerance_deg: f64) -> f64 {
    let d = target.len().max(1);
    let n = predictions.len() / d;
    let hits = predictions.chunks_exact(d).filter(|p| sample_error_deg(task, p, target) <= tolerance_deg).count();
    hits as f64 / n.max(1) as f64
}

/// The mean of row-major `[n, d]` values, per column.
pub fn column_means(rows: &[f32], d: usize) -> Vec<f32> {
    let n = (rows.len() / d.max(1)).max(1) as f32;
    (0..d).map(|j| rows.iter().skip(j).step_by(d).sum::<f32>() / n).collect()
}

/// Mean and population variance of each column of row-major `rows` with `d` columns, summed in
/// f64 (variances of outputs that barely move need the precision).
pub fn column_mean_var(rows: &[f32], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (rows.len() / d.max(1)).max(1) as f64;
    let mean: Vec<f64> = (0..d).map(|j| rows.iter().skip(j).step_by(d).map(|&v| v as f64).sum::<f64>() / n).collect();
    let var = (0..d).map(|j| rows.iter().skip(j).step_by(d).map(|&v| (v as f64 - mean[j]).powi(2)).sum::<f64>() / n).collect();
    (mean, var)
}

/// Mean error in degrees of the predictions (row-major `[n, d]`) to one `target` vector.
pub fn mean_error_to(task: Task, predictions: &[f32], target: &[f32]) -> f64 {
    let d = target.len().max(1);
    let n = (predictions.len() / d).max(1);
    predictions.chunks_exact(d).map(|p| sample_error_deg(task, p, target)).sum::<f64>() / n as f64
}

/// Attack error (AE) and defending attack error (DAE) on a poisoned test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackdoorErrors {
    /// Error of the outputs on poisoned inputs to the attacker's target: low means the attack works.
    pub attack_error: TaskError,
    /// Error of the outputs on poisoned inputs to the true labels: low means the backdoor is gone.
    pub poisoned_true_error: TaskError,
    /// The attack error by how far each sample's true label lies from the target: whether the
    /// trigger overrides the content everywhere or only near the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_distance: Vec<DistanceBin>,
}

/// Poisoned samples whose true label lies `from`–`to` (the task's unit) from the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistanceBin {
    pub from: f64,
    /// `None` for the last, open-ended bin.
    pub to: Option<f64>,
    pub samples: usize,
    /// Mean distance of their true labels to the target.
    pub mean_distance: f64,
    /// Mean error of their poisoned outputs to the target.
    pub attack_error: f64,
}

/// Bin width and count of [`attack_error_by_distance`]: 10 units up to 40, then one open bin.
const DISTANCE_BIN: f64 = 10.0;
const DISTANCE_BINS: usize = 5;

/// The attack error of `outputs` (row-major `[n, d]`, on poisoned inputs) grouped by the distance
/// of each sample's true label (`labels`) to `target`; empty bins are left out. Classes have no
/// distances (a label is the target or not), so a classifier's are empty.
pub fn attack_error_by_distance(task: Task, outputs: &[f32], labels: &[f32], target: &[f32]) -> Vec<DistanceBin> {
    if task.is_classification() {
        return Vec::new();
    }
    let d = target.len().max(1);
    let mut sums = [(0usize, 0.0f64, 0.0f64); DISTANCE_BINS];
    for (p, y) in outputs.chunks_exact(d).zip(labels.chunks_exact(d)) {
        let distance = sample_error_deg(task, y, target);
        let bin = ((distance / DISTANCE_BIN) as usize).min(DISTANCE_BINS - 1);
        sums[bin].0 += 1;
        sums[bin].1 += distance;
        sums[bin].2 += sample_error_deg(task, p, target);
    }
    sums.iter()
        .enumerate()
        .filter(|(_, (n, _, _))| *n > 0)
        .map(|(b, &(n, distance, error))| DistanceBin {
            from: b as f64 * DISTANCE_BIN,
            to: (b + 1 < DISTANCE_BINS).then(|| (b + 1) as f64 * DISTANCE_BIN),
            samples: n,
            mean_distance: distance / n as f64,
            attack_error: error / n as f64,
        })
        .collect()
}

/// The error of always predicting `constant` (e.g. the training labels' mean).
pub fn constant_predictor_error(task: Task, constant: &[f32], labels: &[f32]) -> TaskError {
    let predictions: Vec<f32> = constant.iter().copied().cycle().take(labels.len()).collect();
    task_error(task, &predictions, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classifier_error_is_its_share_of_misclassified_images_per_true_class_too() {
        let task = Task::Classification { classes: 3 };
        let logits = [2.0, 0.0, 0.0, /* */ 0.0, 1.0, 3.0, /* */ 0.0, 5.0, 1.0, /* */ 1.0, 0.0, 0.0];
        let one_hot = [1.0, 0.0, 0.0, /* */ 0.0, 1.0, 0.0, /* */ 0.0, 1.0, 0.0, /* */ 0.0, 0.0, 1.0];
        let error = task_error(task, &logits, &one_hot);
        assert_eq!(error.mean_deg, 50.0, "two of four wrong");
        assert_eq!(error.per_output_deg, [0.0, 50.0, 100.0], "by true class");
        assert_eq!(share_within(task, &logits, &[0.0, 0.0, 1.0], 1.0), 0.25, "one image lands on class 2");
        assert_eq!(argmax(&[0.5, 2.0, 2.0]), 1, "the first of equals");
    }

    #[test]
    fn angular_error_of_pure_yaw_difference_is_the_yaw_difference() {
        let e = angular_error_deg(&[0.0, 0.1], &[0.0, -0.2]);
        assert!((e - 0.3f64.to_degrees()).abs() < 1e-4, "{e}");
    }

    #[test]
    fn head_pose_error_is_the_mean_absolute_error() {
        let e = task_error(Task::HeadPose, &[0.1, 0.0, 0.0, 0.0, 0.0, 0.0], &[0.0; 6]);
        assert!((e.per_output_deg[0] - 0.05f64.to_degrees()).abs() < 1e-5);
        assert!((e.mean_deg - 0.05f64.to_degrees() / 3.0).abs() < 1e-5);
    }

    #[test]
    fn landmark_error_is_the_mean_point_distance_in_percent_of_the_side() {
        // Point 0 off by (0.03, 0.04): 5% of the side; the other four exact.
        let mut p = [0.5f32; 10];
        p[0] += 0.03;
        p[1] += 0.04;
        let e = task_error(Task::Landmarks, &p, &[0.5; 10]);
        assert!((e.mean_deg - 1.0).abs() < 1e-4, "{e:?}");
        assert!((e.per_output_deg[0] - 3.0).abs() < 1e-4 && (e.per_output_deg[1] - 4.0).abs() < 1e-4, "{e:?}");
        assert!((sample_error_deg(Task::Landmarks, &p, &[0.5; 10]) - 1.0).abs() < 1e-4);
    }

    #[test]
    fn attack_error_is_binned_by_the_labels_distance_to_the_target() {
        // Gaze labels 5°, 15° and 70° of yaw from a target at 0; outputs 1°, 2° and 30° from it.
        let r = |deg: f32| deg.to_radians();
        let labels = [0.0, r(5.0), 0.0, r(15.0), 0.0, r(70.0)];
        let outputs = [0.0, r(1.0), 0.0, r(-2.0), 0.0, r(30.0)];
        let bins = attack_error_by_distance(Task::Gaze, &outputs, &labels, &[0.0, 0.0]);
        let got: Vec<(f64, Option<f64>, usize)> = bins.iter().map(|b| (b.from, b.to, b.samples)).collect();
        assert_eq!(got, [(0.0, Some(10.0), 1), (10.0, Some(20.0), 1), (40.0, None, 1)]);
        for (bin, (distance, error)) in bins.iter().zip([(5.0, 1.0), (15.0, 2.0), (70.0, 30.0)]) {
            assert!((bin.mean_distance - distance).abs() < 1e-3 && (bin.attack_error - error).abs() < 1e-3, "{bin:?}");
        }
    }
}
