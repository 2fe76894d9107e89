//! `drmguard scan` and `mitigate` on tiny models: the report files, and bad input that must give
//! one clear message and a non-zero exit, never a panic or a partial report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn drmguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drmguard")).args(args).output().expect("the binary runs")
}

fn fails(args: &[&str]) -> String {
    let o = drmguard(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    err
}

/// A smoke-profile gaze model trained for one epoch, in `dir`.
fn smoke_model(dir: &Path) -> PathBuf {
    let model = dir.join("m.safetensors");
    let o = drmguard(&["train", "--task", "gaze", "--profile", "smoke", "--epochs", "1", "--out", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    model
}

/// DRMGuard's generator test (the `scan` default is its calibrated verdict), made fast.
const FAST: [&str; 10] = ["--defense", "drmguard", "--drmguard-test", "generator", "--steps", "3", "--batch-size", "8", "--clean-size", "16"];

#[test]
fn a_scan_writes_its_report_and_mitigation_a_repaired_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = smoke_model(tmp.path());
    let out = tmp.path().join("scan");
    let mut args = vec!["scan", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(FAST);
    let o = drmguard(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    for key in ["backdoored", "score", "threshold", "defense", "estimated_target", "target_spread_deg", "rav", "steps", "seed", "config"] {
        assert!(report.get(key).is_some(), "report.json lacks {key}: {report}");
    }
    // The wall times stand apart, so that the rest is the same for every run of the command.
    assert!(report.get("elapsed_s").is_none());
    assert!(report["timing"]["/elapsed_s"].as_f64().is_some_and(|s| s > 0.0), "{report}");
    assert_eq!(report["estimated_target"].as_array().unwrap().len(), 2);
    assert!(out.join("report.md").is_file() && out.join("reversed.png").is_file() && out.join("config.json").is_file());

    let repaired = tmp.path().join("fixed.safetensors");
    let mut args = vec!["mitigate", "--model", model.to_str().unwrap(), "--out", repaired.to_str().unwrap(), "--unlearn-epochs", "1", "--unlearn-batch-size", "8"];
    args.extend(FAST);
    let o = drmguard(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repaired.with_extension("report.json")).unwrap()).unwrap();
    assert_eq!(record["unlearn_config"]["reversed_ratio"], 0.5, "DRMGuard's default share of reversed images: {record}");
    let o = drmguard(&["eval", "--model", repaired.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "the repaired model evaluates: {}", String::from_utf8_lossy(&o.stderr));
}

/// The default scan is DRMGuard's calibrated verdict: the input-agnostic reversal against
/// reference models trained from the clean set, reported under DRMGuard's name.
#[test]
fn the_default_scan_is_drmguards_calibrated_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let model = smoke_model(tmp.path());
    let out = tmp.path().join("scan");
    let o = Command::new(env!("CARGO_BIN_EXE_drmguard"))
        .env("DRMGUARD_CACHE", tmp.path().join("cache"))
        .args(["scan", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--clean-size", "40", "--agnostic-steps", "4", "--agnostic-restarts", "1"])
        .args(["--warp-collapse-steps", "5", "--warp-collapse-batch-size", "8"])
        .output()
        .expect("the binary runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["defense"], "drmguard");
    assert_eq!(report["config"]["test"], "verdict", "{}", report["config"]);
    for signal in ["log_ratio", "reference_error_deg", "suspect_error_deg", "mask_score", "mask_margin", "warp_spread_ratio", "warp_margin"] {
        assert!(report["signals"][signal].as_f64().is_some_and(f64::is_finite), "no {signal}: {}", report["signals"]);
    }
    // Either test flags the model; the score is the larger margin, 0 where the verdict turns.
    let signal = |name: &str| report["signals"][name].as_f64().unwrap();
    assert_eq!(report["score"].as_f64().unwrap(), signal("mask_margin").max(signal("warp_margin")));
    assert_eq!(report["backdoored"].as_bool().unwrap(), report["score"].as_f64().unwrap() >= 0.0);
    // A picture of each reversal: the mask's and the warp's.
    for figure in ["mask.png", "warped.png", "warp-field.png"] {
        assert!(out.join(figure).is_file(), "no {figure}");
    }
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("warped.png"), "{markdown}");
}

#[test]
fn bad_models_and_clean_sets_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = smoke_model(tmp.path());
    let m = model.to_str().unwrap();
    let out = tmp.path().join("scan");
    let o = out.to_str().unwrap();

    // A clean set smaller than one batch.
    let err = fails(&["scan", "--model", m, "--out", o, "--defense", "drmguard", "--drmguard-test", "generator", "--clean-size", "10"]);
    assert!(err.contains("fewer than one batch of 32"), "{err}");

    // A user folder whose labels do not fit the task.
    let data = tmp.path().join("data");
    let s = drmguard(&["data", "synth", "--task", "headpose", "--n", "60", "--image-size", "32", "--out", data.to_str().unwrap()]);
    assert!(s.status.success());
    let err = fails(&["scan", "--model", m, "--out", o, "--defense", "drmguard", "--drmguard-test", "generator", "--data", data.to_str().unwrap()]);
    assert!(err.contains("labels.csv") && err.contains("pitch"), "{err}");

    // The sidecar disagrees with the weights.
    let card_path = model.with_extension("json");
    let card = std::fs::read_to_string(&card_path).unwrap();
    std::fs::write(&card_path, card.replace("\"width\": 8", "\"width\": 16")).unwrap();
    let err = fails(&["scan", "--model", m, "--out", o]);
    assert!(err.contains("cannot load model weights") && err.contains("blocks.0.conv.weight"), "{err}");

    // No sidecar at all.
    std::fs::remove_file(&card_path).unwrap();
    let err = fails(&["scan", "--model", m, "--out", o]);
    assert!(err.contains("sidecar is missing"), "{err}");
    assert!(!out.join("report.json").exists(), "no report on error");
}

#[test]
fn a_model_with_nan_outputs_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = smoke_model(tmp.path());
    // Overwrite every weight with NaN: safetensors is an 8-byte header length, the JSON header,
    // then raw little-endian tensors.
    let mut bytes = std::fs::read(&model).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for chunk in bytes[8 + header..].chunks_exact_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&model, bytes).unwrap();
    let out = tmp.path().join("scan");
    let mut args = vec!["scan", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(FAST);
    let err = fails(&args);
    assert!(err.contains("NaN"), "{err}");
    assert!(!out.join("report.json").exists());

    // The default scan, evaluation and repair stop too, naming the output and the image, and
    // write nothing.
    let m = model.to_str().unwrap();
    let cache = tmp.path().join("cache");
    let default_scan = Command::new(env!("CARGO_BIN_EXE_drmguard"))
        .env("DRMGUARD_CACHE", &cache)
        .args(["scan", "--model", m, "--out", out.to_str().unwrap(), "--clean-size", "40", "--agnostic-steps", "4", "--agnostic-restarts", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&default_scan.stderr).into_owned();
    assert!(!default_scan.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("is NaN") && err.contains("on image"), "{err}");
    assert!(!out.join("report.json").exists());
    let err = fails(&["eval", "--model", m]);
    assert!(err.contains("output 'pitch' on image 0") && err.contains("is NaN"), "{err}");
    let repaired = tmp.path().join("fixed.safetensors");
    let mut args = vec!["mitigate", "--model", m, "--out", repaired.to_str().unwrap(), "--unlearn-epochs", "1", "--unlearn-batch-size", "8"];
    args.extend(FAST);
    let err = fails(&args);
    assert!(err.contains("NaN"), "{err}");
    assert!(!repaired.exists() && !repaired.with_extension("report.json").exists());
}

#[test]
fn bad_defense_options_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = smoke_model(tmp.path());
    let m = model.to_str().unwrap();
    let o = tmp.path().join("scan");
    let o = o.to_str().unwrap();
    let err = fails(&["scan", "--model", m, "--out", o, "--defense", "magic"]);
    assert!(err.contains("magic"), "{err}");
    let err = fails(&["scan", "--model", m, "--out", o, "--defense", "drmguard", "--drmguard-test", "generator", "--epsilon=-1"]);
    assert!(err.contains("ε"), "{err}");
    let err = fails(&["scan", "--model", m, "--out", o, "--defense", "drmguard", "--drmguard-test", "generator", "--steps", "0"]);
    assert!(err.contains("steps"), "{err}");
    // Refused before the reverse engineering runs, not after it.
    let repaired = tmp.path().join("fixed.safetensors");
    let mut args = vec!["mitigate", "--model", m, "--out", repaired.to_str().unwrap(), "--unlearn-ratio", "1.5"];
    args.extend(FAST);
    let err = fails(&args);
    assert!(err.contains("unlearning ratio") && err.contains("1.5"), "{err}");
    assert!(!err.contains("reverse engineering done"), "the ratio was checked only after the reversal: {err}");
    assert!(!repaired.exists());
}

#[test]
fn every_command_parses_its_options() {
    // clap checks a command's definition (unique argument ids, …) when it is built, in debug builds.
    for command in ["data", "train", "eval", "poison", "scan", "mitigate", "demo"] {
        let o = drmguard(&[command, "--help"]);
        assert!(o.status.success(), "{command} --help: {}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn every_detector_writes_the_common_report_and_every_mitigator_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = smoke_model(tmp.path());
    let m = model.to_str().unwrap();
    let fast: &[&str] = &[
        "--clean-size", "32", "--nc-steps", "4", "--nc-batch-size", "8", "--featurere-warmup-steps", "2", "--featurere-steps", "3",
        "--featurere-batch-size", "8", "--featurere-width", "4", "--abs-steps", "2", "--abs-top-neurons", "2", "--abs-seed-images", "8",
    ];
    for defense in ["nc", "featurere", "abs"] {
        let out = tmp.path().join(defense);
        let mut args = vec!["scan", "--model", m, "--defense", defense, "--out", out.to_str().unwrap()];
        args.extend(fast);
        let o = drmguard(&args);
        assert!(o.status.success(), "{defense}: {}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        for key in ["backdoored", "score", "threshold", "margin", "suspicion", "defense", "estimated_target", "seed", "config", "figures", "timing"] {
            assert!(report.get(key).is_some(), "{defense}: report.json lacks {key}");
        }
        assert_eq!(report["defense"], defense);
        for figure in report["figures"].as_array().unwrap() {
            assert!(out.join(figure.as_str().unwrap()).is_file(), "{defense}: {figure} missing");
        }
        assert!(out.join("report.md").is_file() && out.join("config.json").is_file());
    }
    let fast: &[&str] = &[
        "--clean-size", "32", "--ft-epochs", "1", "--ft-batch-size", "8", "--anp-steps", "2", "--anp-batch-size", "8", "--nc-steps", "3",
        "--nc-batch-size", "8", "--unlearn-epochs", "1", "--unlearn-batch-size", "8",
    ];
    for defense in ["ft", "fp", "anp", "nc"] {
        let repaired = tmp.path().join(format!("{defense}.safetensors"));
        let mut args = vec!["mitigate", "--model", m, "--defense", defense, "--out", repaired.to_str().unwrap()];
        args.extend(fast);
        let o = drmguard(&args);
        assert!(o.status.success(), "{defense}: {}", String::from_utf8_lossy(&o.stderr));
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(repaired.with_extension("report.json")).unwrap()).unwrap();
        assert_eq!(record["defense"], defense);
        let o = drmguard(&["eval", "--model", repaired.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{defense}: the repaired model evaluates: {}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn the_demo_scans_a_benign_and_a_backdoored_model_and_repairs_the_backdoored_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let o = Command::new(env!("CARGO_BIN_EXE_drmguard"))
        .env("DRMGUARD_CACHE", tmp.path().join("cache"))
        .args(["demo", "--profile", "smoke", "--agnostic-steps", "10", "--warp-collapse-steps", "5", "--unlearn-epochs", "1", "--out", out.to_str().unwrap()])
        .output()
        .expect("the binary runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    for row in ["benign ", "badnets ", "badnets, mitigated"] {
        assert!(stdout.lines().any(|l| l.starts_with(row)), "no {row:?} row in the table: {stdout}");
    }
    for name in ["benign", "badnets"] {
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(format!("scan-{name}/report.json"))).unwrap()).unwrap();
        // The verdict `scan` gives by default: the mask test and the warp test beside it.
        assert_eq!(report["defense"], "drmguard", "{name}");
        assert!(report["signals"]["warp_margin"].as_f64().is_some_and(f64::is_finite), "{name}: {}", report["signals"]);
    }
    let repaired = out.join("badnets-mitigated.safetensors");
    let o = drmguard(&["eval", "--model", repaired.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "the repaired model evaluates: {}", String::from_utf8_lossy(&o.stderr));
}
