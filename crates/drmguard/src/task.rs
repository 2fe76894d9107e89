//! The regression tasks drmguard knows: what the outputs mean and how errors are measured.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A regression task. Angle labels are stored in radians, landmark labels in fractions of the
/// image side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Gaze direction (pitch, yaw). Yaw > 0 looks towards the image's right, pitch > 0 looks up.
    Gaze,
    /// Head pose (yaw, pitch, roll). Yaw > 0 turns the face towards the image's right, pitch > 0
    /// tilts it up, roll > 0 tilts the top of the head towards the image's right.
    #[serde(rename = "headpose")]
    HeadPose,
    /// Five facial landmarks (left eye, right eye, nose tip, left and right mouth corner; left is
    /// the image's left), as image coordinates x (right) and y (down) in fractions of the image
    /// side: MTCNN's five points.
    Landmarks,
}

impl Task {
    pub const ALL: [Task; 3] = [Task::Gaze, Task::HeadPose, Task::Landmarks];

    pub fn name(self) -> &'static str {
        match self {
            Task::Gaze => "gaze",
            Task::HeadPose => "headpose",
            Task::Landmarks => "landmarks",
        }
    }

    /// Output names, in the order of the model's outputs and of `labels.csv`'s columns.
    pub fn output_names(self) -> &'static [&'static str] {
        match self {
            Task::Gaze => &["pitch", "yaw"],
            Task::HeadPose => &["yaw", "pitch", "roll"],
            Task::Landmarks => &[
                "left_eye_x",
                "left_eye_y",
                "right_eye_x",
                "right_eye_y",
                "nose_x",
                "nose_y",
                "mouth_left_x",
                "mouth_left_y",
                "mouth_right_x",
                "mouth_right_y",
            ],
        }
    }

    pub fn output_dim(self) -> usize {
        self.output_names().len()
    }

    /// Whether the outputs are angles (in radians); otherwise image coordinates.
    pub fn is_angular(self) -> bool {
        !matches!(self, Task::Landmarks)
    }

    /// Half-ranges (radians) of the built-in synthetic angle labels, per output; landmarks have
    /// none (their labels follow from the head-pose renderer's geometry).
    pub fn label_half_range(self) -> &'static [f32] {
        match self {
            Task::Gaze => &[0.4, 0.6],
            Task::HeadPose => &[60.0 * DEG, 40.0 * DEG, 30.0 * DEG],
            Task::Landmarks => &[],
        }
    }

    /// How this task's error is measured, in [`Self::unit`].
    pub fn metric_name(self) -> &'static str {
        match self {
            Task::Gaze => "3-D angular error",
            Task::HeadPose => "mean absolute error over yaw, pitch and roll",
            Task::Landmarks => "mean point-to-point distance in % of the image side",
        }
    }

    /// The unit labels and outputs are stored in.
    pub fn label_units(self) -> &'static str {
        if self.is_angular() { "radians" } else { "fraction of the image side" }
    }

    /// The unit errors are reported in: degrees for angles, per cent of the image side for
    /// landmarks. Report fields named `*_deg` hold this unit.
    pub fn unit(self) -> &'static str {
        if self.is_angular() { "°" } else { "%" }
    }

    /// [`Self::unit`] spelt out, for headings.
    pub fn unit_name(self) -> &'static str {
        if self.is_angular() { "degrees" } else { "% of the image side" }
    }

    /// Error units per label unit: degrees per radian, or per cent of the side per fraction.
    pub fn units_per_label(self) -> f64 {
        if self.is_angular() { 180.0 / std::f64::consts::PI } else { 100.0 }
    }

    /// A label or output difference in the error unit.
    pub fn to_unit(self, v: f32) -> f64 {
        v as f64 * self.units_per_label()
    }

    /// Output values for people: degrees for angles, fractions of the side for landmarks.
    pub fn format_values(self, values: &[f32]) -> String {
        let text: Vec<String> = if self.is_angular() {
            values.iter().map(|v| format!("{:.2}°", v.to_degrees())).collect()
        } else {
            values.iter().map(|v| format!("{v:.3}")).collect()
        };
        text.join(", ")
    }
}

impl std::str::FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gaze" => Ok(Task::Gaze),
            "headpose" | "head-pose" | "head_pose" => Ok(Task::HeadPose),
            "landmarks" | "landmark" => Ok(Task::Landmarks),
            _ => Err(Error::UnknownName {
                what: "task",
                name: s.to_string(),
                expected: "gaze, headpose, landmarks".into(),
            }),
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One degree in radians.
pub const DEG: f32 = std::f32::consts::PI / 180.0;
