//! Task errors in the task's unit ([`Task::unit`]): 3-D angular error for gaze and mean absolute
//! error for head pose, in degrees; mean point-to-point distance for landmarks, in per cent of the
//! image side. Fields named `*_deg` hold that unit.

use serde::{Deserialize, Serialize};

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
    /// over all axes (head pose), in degrees; mean point distance (landmarks), in % of the side.
    pub mean_deg: f64,
    /// Mean absolute error per output, in the task's unit.
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
        Task::Gaze | Task::Landmarks => joint / n,
        Task::HeadPose => per_output.iter().sum::<f64>() / d as f64,
    };
    TaskError { mean_deg, per_output_deg: per_output }
}

/// One sample's error in the task's unit, by its metric (angular for gaze, mean absolute over the
/// axes for head pose, mean point distance for landmarks).
pub fn sample_error_deg(task: Task, prediction: &[f32], label: &[f32]) -> f64 {
    match task {
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
}
