//! The regression tasks drmguard knows: what the outputs mean and how errors are measured.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A regression task. Labels are always stored in radians.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Gaze direction (pitch, yaw). Yaw > 0 looks towards the image's right, pitch > 0 looks up.
    Gaze,
    /// Head pose (yaw, pitch, roll). Yaw > 0 turns the face towards the image's right, pitch > 0
    /// tilts it up, roll > 0 tilts the top of the head towards the image's right.
    #[serde(rename = "headpose")]
    HeadPose,
}

impl Task {
    pub const ALL: [Task; 2] = [Task::Gaze, Task::HeadPose];

    pub fn name(self) -> &'static str {
        match self {
            Task::Gaze => "gaze",
            Task::HeadPose => "headpose",
        }
    }

    /// Output names, in the order of the model's outputs and of `labels.csv`'s columns.
    pub fn output_names(self) -> &'static [&'static str] {
        match self {
            Task::Gaze => &["pitch", "yaw"],
            Task::HeadPose => &["yaw", "pitch", "roll"],
        }
    }

    pub fn output_dim(self) -> usize {
        self.output_names().len()
    }

    /// Half-ranges (radians) of the built-in synthetic labels, per output.
    pub fn label_half_range(self) -> &'static [f32] {
        match self {
            Task::Gaze => &[0.4, 0.6],
            Task::HeadPose => &[60.0 * DEG, 40.0 * DEG, 30.0 * DEG],
        }
    }

    /// How this task's error is measured, in degrees.
    pub fn metric_name(self) -> &'static str {
        match self {
            Task::Gaze => "3-D angular error",
            Task::HeadPose => "mean absolute error over yaw, pitch and roll",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gaze" => Ok(Task::Gaze),
            "headpose" | "head-pose" | "head_pose" => Ok(Task::HeadPose),
            _ => Err(Error::UnknownName {
                what: "task",
                name: s.to_string(),
                expected: "gaze, headpose".into(),
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
