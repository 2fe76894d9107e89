//! The tasks drmguard knows, regression and classification: what the outputs mean and how errors
//! are measured.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A model's task. Angle labels are stored in radians, landmark labels in fractions of the image
/// side, class labels one-hot. Cards, configs and reports hold it as its name (`"gaze"`,
/// `"classification:10"`), the form the command line reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Task {
    /// Gaze direction (pitch, yaw). Yaw > 0 looks towards the image's right, pitch > 0 looks up.
    Gaze,
    /// Head pose (yaw, pitch, roll). Yaw > 0 turns the face towards the image's right, pitch > 0
    /// tilts it up, roll > 0 tilts the top of the head towards the image's right.
    HeadPose,
    /// Five facial landmarks (left eye, right eye, nose tip, left and right mouth corner; left is
    /// the image's left), as image coordinates x (right) and y (down) in fractions of the image
    /// side: MTCNN's five points.
    Landmarks,
    /// Image classification: one logit per class out, one-hot labels in; `labels.csv` holds one
    /// `class` column of class indices `0..classes`. The error is the share of misclassified
    /// images in per cent, so accuracy is 100 minus it and a backdoor's attack error is 100 minus
    /// its attack success rate.
    Classification { classes: u16 },
}

/// The most classes a classification task may have.
pub const MAX_CLASSES: u16 = 1000;

/// The label column of a classification task's `labels.csv`.
pub const CLASS_COLUMN: &str = "class";

impl Task {
    /// The regression tasks, each with a built-in synthetic data set.
    pub const ALL: [Task; 3] = [Task::Gaze, Task::HeadPose, Task::Landmarks];

    /// Fashion-MNIST's ten classes (built-in data from Debian's `dataset-fashion-mnist`).
    pub const FASHION: Task = Task::Classification { classes: 10 };

    pub fn name(self) -> &'static str {
        match self {
            Task::Gaze => "gaze",
            Task::HeadPose => "headpose",
            Task::Landmarks => "landmarks",
            Task::Classification { .. } => "classification",
        }
    }

    /// A number that tells tasks apart in derived random streams and seeds (regression tasks keep
    /// their declaration order, 0–2, which cached seeds were derived from).
    pub fn stream(self) -> u64 {
        match self {
            Task::Gaze => 0,
            Task::HeadPose => 1,
            Task::Landmarks => 2,
            Task::Classification { classes } => 3 | (classes as u64) << 8,
        }
    }

    /// The number of classes of a classification task; `None` for regression.
    pub fn classes(self) -> Option<usize> {
        match self {
            Task::Classification { classes } => Some(classes as usize),
            _ => None,
        }
    }

    pub fn is_classification(self) -> bool {
        self.classes().is_some()
    }

    /// Output names, in the order of the model's outputs (and of a regression `labels.csv`'s
    /// columns): `class_0`, `class_1`, … for a classifier's logits.
    pub fn output_names(self) -> Vec<String> {
        let names: &[&str] = match self {
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
            Task::Classification { classes } => return (0..classes).map(|c| format!("class_{c}")).collect(),
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The label columns of this task's `labels.csv`, after `file`.
    pub fn label_columns(self) -> Vec<String> {
        if self.is_classification() { vec![CLASS_COLUMN.to_string()] } else { self.output_names() }
    }

    pub fn output_dim(self) -> usize {
        self.classes().unwrap_or_else(|| self.output_names().len())
    }

    /// Whether the outputs are angles (in radians).
    pub fn is_angular(self) -> bool {
        matches!(self, Task::Gaze | Task::HeadPose)
    }

    /// Half-ranges (radians) of the built-in synthetic angle labels, per output; landmarks have
    /// none (their labels follow from the head-pose renderer's geometry), nor do classes.
    pub fn label_half_range(self) -> &'static [f32] {
        match self {
            Task::Gaze => &[0.4, 0.6],
            Task::HeadPose => &[60.0 * DEG, 40.0 * DEG, 30.0 * DEG],
            Task::Landmarks | Task::Classification { .. } => &[],
        }
    }

    /// How this task's error is measured, in [`Self::unit`].
    pub fn metric_name(self) -> &'static str {
        match self {
            Task::Gaze => "3-D angular error",
            Task::HeadPose => "mean absolute error over yaw, pitch and roll",
            Task::Landmarks => "mean point-to-point distance in % of the image side",
            Task::Classification { .. } => "share of misclassified images in % (100 − accuracy)",
        }
    }

    /// The unit labels and outputs are stored in.
    pub fn label_units(self) -> &'static str {
        match self {
            Task::Gaze | Task::HeadPose => "radians",
            Task::Landmarks => "fraction of the image side",
            Task::Classification { .. } => "logits (labels one-hot)",
        }
    }

    /// The unit errors are reported in: degrees for angles, per cent of the image side for
    /// landmarks, per cent of the images for classes. Report fields named `*_deg` hold this unit.
    pub fn unit(self) -> &'static str {
        if self.is_angular() { "°" } else { "%" }
    }

    /// [`Self::unit`] spelt out, for headings.
    pub fn unit_name(self) -> &'static str {
        match self {
            Task::Gaze | Task::HeadPose => "degrees",
            Task::Landmarks => "% of the image side",
            Task::Classification { .. } => "% of the images",
        }
    }

    /// Error units per label unit: degrees per radian, or per cent per fraction (of the image
    /// side for landmarks, of a probability for classes).
    pub fn units_per_label(self) -> f64 {
        if self.is_angular() { 180.0 / std::f64::consts::PI } else { 100.0 }
    }

    /// A label or output difference in the error unit.
    pub fn to_unit(self, v: f32) -> f64 {
        v as f64 * self.units_per_label()
    }

    /// Output values for people: degrees for angles, fractions of the side for landmarks.
    pub fn format_values(self, values: &[f32]) -> String {
        if self.is_classification() {
            return format!("class {}", argmax(values));
        }
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
            "fashion" | "fashion-mnist" => Ok(Task::FASHION),
            other => match other.strip_prefix("classification:").map(str::parse::<u16>) {
                Some(Ok(classes)) if (2..=MAX_CLASSES).contains(&classes) => Ok(Task::Classification { classes }),
                Some(_) => Err(Error::invalid("task", format!("{s} (a classifier has 2 to {MAX_CLASSES} classes)"))),
                None => Err(Error::UnknownName {
                    what: "task",
                    name: s.to_string(),
                    expected: "gaze, headpose, landmarks, fashion, classification:N".into(),
                }),
            },
        }
    }
}

impl From<Task> for String {
    fn from(task: Task) -> String {
        task.to_string()
    }
}

impl TryFrom<String> for Task {
    type Error = Error;
    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

impl std::fmt::Display for Task {
    /// The name [`FromStr`](std::str::FromStr) reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Task::Classification { classes } => write!(f, "classification:{classes}"),
            _ => f.write_str(self.name()),
        }
    }
}

/// The index of the largest value (the first of equals; 0 for an empty slice): the class a row
/// of logits or a one-hot label names.
pub fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
}

/// One degree in radians.
pub const DEG: f32 = std::f32::consts::PI / 180.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_tasks_read_back_their_names_and_size_their_outputs() {
        assert_eq!("fashion".parse::<Task>().unwrap(), Task::FASHION);
        let three: Task = "classification:3".parse().unwrap();
        assert_eq!((three, three.to_string().parse::<Task>().unwrap()), (Task::Classification { classes: 3 }, three));
        assert_eq!((three.output_dim(), three.output_names()), (3, vec!["class_0".into(), "class_1".into(), "class_2".into()]));
        assert_eq!(three.label_columns(), [CLASS_COLUMN]);
        for bad in ["classification:1", "classification:x", "classification:1001"] {
            assert!(bad.parse::<Task>().is_err(), "{bad}");
        }
        assert_eq!(Task::FASHION.format_values(&[0.1, 3.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]), "class 1");
        let streams: std::collections::HashSet<u64> = [Task::Gaze, Task::HeadPose, Task::Landmarks, three, Task::FASHION].map(Task::stream).into();
        assert_eq!(streams.len(), 5);
        assert_eq!(Task::HeadPose.stream(), 1, "cached seeds derive from it");
        assert_eq!(serde_json::to_string(&[Task::HeadPose, three]).unwrap(), r#"["headpose","classification:3"]"#, "names, as before for regression");
        assert_eq!(serde_json::from_str::<Task>(r#""classification:3""#).unwrap(), three);
        assert!(serde_json::from_str::<Task>(r#""pose""#).is_err());
    }
}
