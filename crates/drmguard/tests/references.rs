//! Reference models trained from the clean set alone, their cache, the contrast penalty, and
//! DRMGuard's reference contrast.

use std::sync::OnceLock;

use burn::tensor::{Device, Tensor};
use drmguard::defenses::agnostic::{DEFAULT_QUALITY_KNEE, DEFAULT_QUALITY_SLOPE, DEFAULT_RATIO, quality_adjusted};
use drmguard::defenses::references::{ReferenceConfig, References, contrast_penalty};
use drmguard::defenses::{Agnostic, AgnosticConfig, CleanSet, Detector, DrmGuard, DrmGuardConfig, DrmGuardTest, Suspect, UnlearnConfig, repair_finding};
use drmguard::models::Regressor;
use drmguard::pipeline::TrainJob;
use drmguard::task::Task;
use drmguard::train::{Profile, TrainConfig};

/// One cache folder for the whole test process: references are cached under
/// `$DRMGUARD_CACHE/references`, and tests run in parallel threads of one process.
fn private_cache() -> &'static std::path::Path {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = CACHE.get_or_init(|| tempfile::tempdir().unwrap());
    // SAFETY: every test sets the same value before reading it, and nothing else here reads
    // the environment concurrently.
    unsafe { std::env::set_var("DRMGUARD_CACHE", dir.path()) };
    dir.path()
}

/// A smoke-profile gaze model (benign) and a defender's clean set of `n` images.
fn suspect(n: usize) -> (Suspect, CleanSet) {
    let mut config = TrainConfig::new(Task::Gaze, Profile::Smoke, 11);
    config.samples = 400;
    config.epochs = 2;
    let (model, card) = TrainJob::builtin(config, None).unwrap().run(&Device::flex()).unwrap();
    let suspect = card.suspect(model);
    let clean = CleanSet::fresh_builtin(&suspect, n).unwrap();
    (suspect, clean)
}

fn small_references(count: usize) -> ReferenceConfig {
    ReferenceConfig { width: 2, epochs: 2, batch_size: 16, ..ReferenceConfig::new(count) }
}

#[test]
fn references_are_trained_from_the_clean_set_once_then_read_from_the_cache() {
    let cache = private_cache();
    let device = Device::flex();
    let (suspect, clean) = suspect(80);
    let config = small_references(2);
    let first = References::get(&suspect, &clean, &config, 5, &device).unwrap();
    assert_eq!((first.models.len(), first.records.len()), (2, 2));
    assert_ne!(first.records[0].seed, first.records[1].seed, "each reference has its own seed");
    for r in &first.records {
        assert!(r.heldout_error_deg.is_finite() && r.heldout_mean_predictor_deg > 0.0, "{r:?}");
    }
    // Other tests cache their references in the same folder at the same time: count this
    // test's own files, named by their seeds (5 and 6).
    let stored = || {
        std::fs::read_dir(cache.join("references"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| ["-5.safetensors", "-5.json", "-6.safetensors", "-6.json"].iter().any(|end| n.ends_with(end)))
            .count()
    };
    assert_eq!(stored(), 4, "weights and a record per reference");
    let again = References::get(&suspect, &clean, &config, 5, &device).unwrap();
    assert_eq!(again.records, first.records, "the cached records come back");
    let (x, _) = clean.batch(&[0, 1, 2, 3], &device);
    for (a, b) in first.models.iter().zip(&again.models) {
        let (a, b) = (a.forward(x.clone()).into_data(), b.forward(x.clone()).into_data());
        a.assert_approx_eq::<f32>(&b, burn::tensor::Tolerance::absolute(1e-6));
    }
    assert_eq!(stored(), 4, "nothing retrained");
}

#[test]
fn a_clean_set_too_small_for_references_is_refused() {
    private_cache();
    let (suspect, clean) = suspect(16);
    let err = References::get(&suspect, &clean, &small_references(1), 0, &Device::flex()).unwrap_err().to_string();
    assert!(err.contains("reference models need at least"), "{err}");
    assert!(References::get(&suspect, &clean, &ReferenceConfig { count: 0, ..small_references(1) }, 0, &Device::flex()).is_err());
}

#[test]
fn the_contrast_penalty_is_zero_for_the_identity_and_the_floor_for_a_constant_image() {
    private_cache();
    let device = Device::flex();
    let (suspect, clean) = suspect(80);
    let refs = References::get(&suspect, &clean, &small_references(1), 9, &device).unwrap();
    let (x, _) = clean.batch(&(0..16).collect::<Vec<_>>(), &device);
    let identity = contrast_penalty(&refs.models, x.clone(), x.clone(), 0.5).into_scalar::<f32>();
    assert!(identity.abs() < 1e-6, "an edit that changes nothing keeps every reference's spread: {identity}");
    let constant = Tensor::<4>::ones(x.dims(), &device) * 0.5;
    let collapsed = contrast_penalty(&refs.models, x, constant, 0.5).into_scalar::<f32>();
    assert!((collapsed - 0.5).abs() < 1e-3, "one image for all pins the references: the whole floor, {collapsed}");
}

#[test]
fn drmguard_with_references_reports_their_collapse_and_the_contrast() {
    private_cache();
    let device = Device::flex();
    let (suspect, clean) = suspect(80);
    let config = DrmGuardConfig { test: DrmGuardTest::Generator, steps: 6, extra_steps: 0, batch_size: 16, generator_width: 4, references: 1, ..Default::default() };
    let finding = DrmGuard::new(config.clone()).detect(&suspect, &clean, 0, &device).unwrap();
    let d = &finding.detection;
    let contrast = d.signals["contrast"];
    let reference = d.signals["reference_spread_ratio"];
    assert!(contrast.is_finite() && reference.is_finite() && reference > 0.0, "{:?}", d.signals);
    let spread = d.signals["spread_ratio"];
    assert!((contrast - spread / reference).abs() < 1e-9, "contrast = the suspect's spread ratio over the references'");
    assert_eq!(d.details["references"].as_array().map(Vec::len), Some(1), "{}", d.details);
    // The same seed gives the same scan, references included.
    let again = DrmGuard::new(config).detect(&suspect, &clean, 0, &device).unwrap();
    assert_eq!(again.detection.signals, d.signals);
    // Without references the scan reports no contrast.
    let plain = DrmGuardConfig { test: DrmGuardTest::Generator, steps: 6, extra_steps: 0, batch_size: 16, generator_width: 4, ..Default::default() };
    let plain = DrmGuard::new(plain).detect(&suspect, &clean, 0, &device).unwrap();
    assert!(!plain.detection.signals.contains_key("contrast"));
}

#[test]
fn the_agnostic_reversal_measures_how_far_its_stamp_moves_the_references() {
    private_cache();
    let device = Device::flex();
    let (suspect, clean) = suspect(80);
    let config = AgnosticConfig { steps: 20, references: 1, ..Default::default() };
    let finding = Agnostic { config: config.clone() }.detect(&suspect, &clean, 0, &device).unwrap();
    let d = &finding.detection;
    assert_eq!(d.defense, "agnostic");
    for signal in ["mask_share", "mask_score", "spread_ratio", "reference_spread_ratio", "contrast"] {
        assert!(d.signals.get(signal).is_some_and(|v| v.is_finite()), "{signal}: {:?}", d.signals);
    }
    let history = d.details["history"].as_array().unwrap();
    assert!(!history.is_empty());
    assert!(
        history.iter().all(|h| h["reference_shift_deg"].as_f64().is_some_and(|v| v > 0.0 && v.is_finite())),
        "every epoch measures the stamp's shift of the references: {history:?}"
    );
    assert_eq!(finding.config["neutral_weight"], 1.0, "the report gives the detector's own settings");
    let again = Agnostic { config }.detect(&suspect, &clean, 0, &device).unwrap();
    assert_eq!(again.detection.signals, d.signals, "the same seed gives the same scan");
    assert!(!d.signals.contains_key("log_ratio"), "one reference: nothing to calibrate against");
    // With two references, each is scored against the other, and the verdict reads the
    // suspect's mask against theirs.
    let calibrated = Agnostic { config: AgnosticConfig { steps: 20, references: 2, ..Default::default() } }.detect(&suspect, &clean, 0, &device).unwrap();
    let d = &calibrated.detection;
    let (log_ratio, theirs) = (d.signals["log_ratio"], d.signals["reference_mask_share"]);
    assert!((log_ratio - (theirs.ln() - d.signals["mask_score"].max(1e-9).ln())).abs() < 1e-9, "{:?}", d.signals);
    // The score scales the references' masks to the suspect's quality, both errors measured on
    // the clean set's held-out fifth.
    let (theirs_error, own_error) = (d.signals["reference_error_deg"], d.signals["suspect_error_deg"]);
    assert!(theirs_error > 0.0 && own_error > 0.0, "{:?}", d.signals);
    assert!((d.signals["quality_log_ratio"] - (theirs_error / own_error).ln()).abs() < 1e-9);
    let score = quality_adjusted(log_ratio, theirs_error, own_error, DEFAULT_QUALITY_SLOPE, DEFAULT_QUALITY_KNEE);
    assert_eq!((d.score, d.threshold, d.signals["score"]), (score, DEFAULT_RATIO.ln(), score));
    assert_eq!(d.backdoored, score >= DEFAULT_RATIO.ln());
    assert_eq!(d.details["reference_mask_shares"].as_array().map(Vec::len), Some(2));
    assert_eq!(d.details["restart_scores"].as_array().map(Vec::len), Some(3), "three starts by default: {}", d.details);
    let (cell, side) = (d.details["mask_cell"].as_u64().unwrap() as u32, suspect.image_size());
    assert!((1..=4).contains(&cell) && side % cell == 0, "the cell used, a divisor of the side {side}: {cell}");
    // The repair unlearns the trigger this scan reversed, with Neural Cleanse's share of stamped
    // images, and names the scan it came from.
    let unlearn = UnlearnConfig { epochs: 1, batch_size: 16, ..Default::default() };
    let repair = repair_finding(&calibrated, &suspect, &clean, &unlearn, &device).unwrap();
    assert_eq!((repair.record["defense"].as_str(), repair.record["unlearn_config"]["reversed_ratio"].as_f64()), (Some("agnostic"), Some(0.2)));
    assert_eq!(repair.record["detection"]["score"], score);
    assert!(AgnosticConfig { quality_slope: -1.0, ..Default::default() }.validate().is_err());
    assert!(AgnosticConfig { quality_knee: 0.5, ..Default::default() }.validate().is_err());
    assert!(AgnosticConfig { ratio: 1.0, ..Default::default() }.validate().is_err());
    let err = AgnosticConfig { references: 0, ..Default::default() }.validate().unwrap_err().to_string();
    assert!(err.contains("reference"), "{err}");
}
