//! drmguard: find and remove backdoors in deep regression models.
//!
//! The crate is organised by concern: [`attacks`] (backdoors to evaluate defenses against),
//! [`defenses`] (detectors and mitigators, which see a suspect and a clean set only), [`data`]
//! (built-in synthetic tasks and users' image folders), [`models`] (regressors split as
//! f = H ∘ F), [`train`], [`metrics`], [`report`], [`model_file`] (weights plus a JSON sidecar)
//! and [`bench`] (the test bed and the zoo of models trained elsewhere).

pub mod attacks;
pub mod bench;
pub mod data;
pub mod defenses;
pub mod device;
pub mod error;
pub mod io;
pub mod metrics;
pub mod model_file;
pub mod models;
pub mod progress;
pub mod report;
pub mod task;
pub mod train;

pub use burn;
pub use error::{Error, Result};
