//! Training profiles: sizes that fit a purpose, from a seconds-long smoke test to the paper's
//! GPU setting.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::Architecture;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A small CNN on 32×32 images: trains in seconds, for tests and CI.
    Smoke,
    /// ResNet-18 at width 16 on 64×64 images: the CPU default.
    #[default]
    Small,
    /// ResNet-18 at full width on 224×224 images, as in the paper: for GPUs.
    Paper,
}

/// The sizes a profile stands for; every field can be overridden on the command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileDefaults {
    pub architecture: Architecture,
    pub image_size: u32,
    /// Synthetic samples drawn for built-in tasks (all splits together).
    pub samples: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
}

impl Profile {
    pub fn defaults(self) -> ProfileDefaults {
        match self {
            Profile::Smoke => ProfileDefaults {
                architecture: Architecture::SmallCnn { width: 8 },
                image_size: 32,
                samples: 320,
                epochs: 4,
                batch_size: 32,
                learning_rate: 3e-3,
            },
            Profile::Small => ProfileDefaults {
                architecture: Architecture::Resnet18 { width: 16 },
                image_size: 64,
                samples: 10_000,
                epochs: 12,
                batch_size: 64,
                learning_rate: 2e-3,
            },
            Profile::Paper => ProfileDefaults {
                architecture: Architecture::Resnet18 { width: 64 },
                image_size: 224,
                samples: 30_000,
                epochs: 30,
                batch_size: 64,
                learning_rate: 1e-3,
            },
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "smoke" => Ok(Profile::Smoke),
            "small" => Ok(Profile::Small),
            "paper" => Ok(Profile::Paper),
            _ => Err(Error::UnknownName { what: "profile", name: s.into(), expected: "smoke, small, paper".into() }),
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Profile::Smoke => "smoke",
            Profile::Small => "small",
            Profile::Paper => "paper",
        })
    }
}
