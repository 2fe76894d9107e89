//! drmguard: find and remove backdoors in deep regression models.
//!
//! The modules form layers, each using only those below it (ARCHITECTURE.md, checked by
//! `tests/architecture.rs`): [`error`]; [`task`], [`io`], [`device`], [`progress`], [`parallel`],
//! [`settings`]; [`metrics`]
//! and [`data`] (built-in synthetic tasks and users' image folders); [`figures`]; [`models`]
//! (regressors split as f = H ∘ F, their inference, the generators); [`train`]; [`attacks`] and
//! [`defenses`] side by side (a defense sees a suspect and a clean set only); [`model_file`]
//! (weights plus a JSON card); [`pipeline`] (training jobs) and [`untrusted`] (every reader of
//! user input, for fuzzing); [`report`]; and [`bench`] (the test
//! bed and the zoo of models trained elsewhere).

pub mod attacks;
pub mod bench;
pub mod data;
pub mod defenses;
pub mod device;
pub mod error;
pub mod figures;
pub mod io;
pub mod metrics;
pub mod model_file;
pub mod models;
pub mod parallel;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod settings;
pub mod task;
pub mod train;
pub mod untrusted;

pub use burn;
pub use error::{Error, Result};
