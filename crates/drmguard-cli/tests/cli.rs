//! The `drmguard` binary end to end: the main workflow on tiny data, and bad input that must give
//! one clear message and a non-zero exit, never a panic or a partial output file.

use std::path::Path;
use std::process::{Command, Output};

fn drmguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drmguard")).args(args).output().expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must fail, and returns its stderr.
fn fails(args: &[&str]) -> String {
    let o = drmguard(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    err
}

#[test]
fn synth_train_and_eval_work_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = tmp.path().join("m.safetensors");
    let (data_s, model_s) = (data.to_str().unwrap(), model.to_str().unwrap());
    let o = drmguard(&["data", "synth", "--task", "headpose", "--n", "200", "--image-size", "32", "--seed", "2", "--out", data_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(data.join("labels.csv").is_file());
    let o = drmguard(&["train", "--task", "headpose", "--data", data_s, "--profile", "smoke", "--epochs", "2", "--out", model_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(model.is_file() && tmp.path().join("m.json").is_file(), "weights and sidecar are written");
    let card: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join("m.json")).unwrap()).unwrap();
    for key in ["task", "model", "training", "data", "data_hash", "label_mean", "output_names", "output_units"] {
        assert!(card.get(key).is_some(), "sidecar lacks {key}: {card}");
    }
    assert_eq!(card["training"]["seed"], 0);
    let o = drmguard(&["eval", "--model", model_s, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["clean_error_deg", "mean_predictor_error_deg"] {
        let v = report[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {report}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    let o = drmguard(&["data", "show", "--data", data_s, "--task", "headpose", "--image-size", "32", "--count", "4", "--out", tmp.path().join("grid.png").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(image::open(tmp.path().join("grid.png")).is_ok());
    let figure = tmp.path().join("triggers.png");
    // Input-Aware is left out: its default networks take minutes to train (it has its own test).
    let some = "badnets,blended,wanet,clean-label,issba,adaptive";
    let o = drmguard(&["data", "triggers", "--task", "gaze", "--image-size", "32", "--attacks", some, "--out", figure.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&figure).unwrap();
    assert!(img.height() >= img.width(), "one row per attack (at least three), three columns");
    let err = fails(&["data", "triggers", "--task", "gaze", "--attacks", "badnets,trojan", "--out", figure.to_str().unwrap()]);
    assert!(err.contains("unknown attack 'trojan'"), "{err}");
}

#[test]
fn a_landmark_model_trains_evaluates_and_scans_in_its_own_units() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = tmp.path().join("m.safetensors");
    let (data_s, model_s) = (data.to_str().unwrap(), model.to_str().unwrap());
    let o = drmguard(&["data", "synth", "--task", "landmarks", "--n", "240", "--image-size", "32", "--seed", "2", "--out", data_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let header = std::fs::read_to_string(data.join("labels.csv")).unwrap().lines().next().unwrap().to_string();
    assert_eq!(header, "file,left_eye_x,left_eye_y,right_eye_x,right_eye_y,nose_x,nose_y,mouth_left_x,mouth_left_y,mouth_right_x,mouth_right_y");
    let o = drmguard(&["train", "--task", "landmarks", "--data", data_s, "--profile", "smoke", "--epochs", "2", "--out", model_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("validation error") && out.contains('%') && !out.contains('°'), "{out}");
    let card: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join("m.json")).unwrap()).unwrap();
    assert_eq!(card["output_units"], "fraction of the image side");
    let o = drmguard(&["eval", "--model", model_s, "--data", data_s, "--split", "all"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && out.contains("% of the image side") && !out.contains('°'), "{out}{}", stderr(&o));
    let scan = tmp.path().join("scan");
    let o = drmguard(&["scan", "--model", model_s, "--data", data_s, "--defense", "drmguard", "--drmguard-test", "generator", "--steps", "3", "--batch-size", "16", "--out", scan.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(scan.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["task"], "landmarks");
    assert_eq!(report["config"]["lambda1"], 3000.0, "the landmark default λ1");
    assert_eq!(report["estimated_target"].as_array().unwrap().len(), 10);
}

/// `data fashion` on generated IDX files (the tests never read the Debian package).
#[test]
fn fashion_mnist_exports_to_a_folder_with_a_class_column() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = |dims: &[u32], data: &[u8]| {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        dims.iter().for_each(|d| out.extend(d.to_be_bytes()));
        out.extend(data);
        out
    };
    let pixels: Vec<u8> = (0..4 * 28 * 28).map(|i| (i % 256) as u8).collect();
    std::fs::write(tmp.path().join("train-images-idx3-ubyte"), idx(&[4, 28, 28], &pixels)).unwrap();
    std::fs::write(tmp.path().join("train-labels-idx1-ubyte"), idx(&[4], &[3, 1, 4, 1])).unwrap();
    let out = tmp.path().join("fashion");
    let o = drmguard(&["data", "fashion", "--dir", tmp.path().to_str().unwrap(), "--n", "3", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let labels = std::fs::read_to_string(out.join("labels.csv")).unwrap();
    assert_eq!(labels, "file,class\ntrain-00000.png,3\ntrain-00001.png,1\ntrain-00002.png,4\n");
    assert_eq!(image::image_dimensions(out.join("train-00002.png")).unwrap(), (32, 32));
    // Without the files, the message says how to get them.
    let err = fails(&["data", "fashion", "--dir", out.to_str().unwrap(), "--out", tmp.path().join("x").to_str().unwrap()]);
    assert!(err.contains("dataset-fashion-mnist"), "{err}");
}

/// A classifier on a `class` folder: accuracy and attack success rate in `eval`, a one-class
/// target, Neural Cleanse's per-class scan, and a clear refusal from the defenses that read
/// regression outputs.
#[test]
fn a_classifier_trains_on_a_class_folder_and_reports_accuracy_and_attack_success() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("classes");
    std::fs::create_dir(&data).unwrap();
    let mut csv = String::from("file,class\n");
    for i in 0..96u32 {
        let class = i % 3;
        let img = image::RgbImage::from_fn(16, 16, |x, y| {
            let v = if (x + y * 3 + i) % 7 == 0 { 255 } else { 60 * class as u8 };
            image::Rgb([v, v, v])
        });
        img.save(data.join(format!("{i:03}.png"))).unwrap();
        csv.push_str(&format!("{i:03}.png,{class}\n"));
    }
    std::fs::write(data.join("labels.csv"), csv).unwrap();
    let model = tmp.path().join("c.safetensors");
    let (d, m) = (data.to_str().unwrap(), model.to_str().unwrap());
    let common = ["--task", "classification:3", "--data", d, "--profile", "smoke", "--image-size", "16", "--batch-size", "8", "--epochs", "2"];
    let err = fails(&[&["train"][..], &common, &["--attack", "badnets", "--target", "0,1", "--out", m]].concat());
    assert!(err.contains("one class index"), "{err}");
    let err = fails(&[&["train"][..], &common, &["--attack", "badnets", "--target", "3", "--out", m]].concat());
    assert!(err.contains("0–2"), "{err}");
    let o = drmguard(&[&["train"][..], &common, &["--attack", "badnets", "--target", "2", "--out", m]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("validation accuracy"));
    let o = drmguard(&["eval", "--model", m, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["task"], "classification:3");
    assert_eq!(report["target"], serde_json::json!([0.0, 0.0, 1.0]));
    let (accuracy, error) = (report["clean_accuracy"].as_f64().unwrap(), report["clean_error_deg"].as_f64().unwrap());
    assert!((accuracy + error - 100.0).abs() < 1e-9, "{report}");
    assert!((0.0..=100.0).contains(&report["attack_success_rate"].as_f64().unwrap()), "{report}");
    let scan = tmp.path().join("scan");
    let err = fails(&["scan", "--model", m, "--data", d, "--defense", "abs", "--out", scan.to_str().unwrap()]);
    assert!(err.contains("--defense abs does not handle classification:3 models") && err.contains("nc"), "{err}");
    assert!(!scan.exists(), "a refused scan writes nothing");
    // Neural Cleanse in its original form: one mask per class, the smallest one's anomaly index.
    let o = drmguard(&["scan", "--model", m, "--data", d, "--defense", "nc", "--nc-steps", "20", "--nc-batch-size", "8", "--out", scan.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(scan.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["classes"].as_array().map(Vec::len), Some(3), "{report}");
    assert_eq!(report["threshold"], 2.0, "the original's anomaly threshold");
    assert!(report["signals"]["anomaly_index"].as_f64().is_some_and(|v| v >= 0.0), "{report}");
    let err = fails(&["mitigate", "--model", m, "--data", d, "--defense", "anp", "--out", tmp.path().join("r.safetensors").to_str().unwrap()]);
    assert!(err.contains("--defense anp does not handle classification:3 models") && err.contains("ft"), "{err}");
}

#[test]
fn unknown_task_and_profile_are_named() {
    let err = fails(&["train", "--task", "pose", "--out", "/tmp/x.safetensors"]);
    assert!(err.contains("unknown task 'pose'") && err.contains("gaze, headpose"), "{err}");
    let err = fails(&["train", "--task", "gaze", "--profile", "huge", "--out", "/tmp/x.safetensors"]);
    assert!(err.contains("unknown profile 'huge'"), "{err}");
    let err = fails(&["eval", "--model", "x.safetensors", "--device", "tpu"]);
    assert!(err.contains("unknown device 'tpu'"), "{err}");
}

#[test]
fn bad_benchmark_options_are_refused() {
    let err = fails(&["bench", "--profile", "smoke", "--attacks", "badnets,trojan", "--out", "/tmp/x"]);
    assert!(err.contains("--attacks") && err.contains("unknown attack 'trojan'"), "{err}");
    let err = fails(&["bench", "--profile", "smoke", "--tasks", "gaze,fashion", "--detectors", "abs", "--out", "/tmp/x"]);
    assert!(err.contains("abs does not scan classification:10 models"), "{err}");
    let err = fails(&["bench", "--profile", "smoke", "--jobs", "0", "--out", "/tmp/x"]);
    assert!(err.contains("--jobs must be at least 1"), "{err}");
}

#[test]
fn bad_image_sizes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("d");
    let err = fails(&["data", "synth", "--task", "gaze", "--n", "4", "--image-size", "30", "--out", out.to_str().unwrap()]);
    assert!(err.contains("divisible by 8"), "{err}");
    assert!(!out.exists(), "no output on error");
    let err = fails(&["train", "--task", "gaze", "--profile", "smoke", "--image-size", "36", "--out", tmp.path().join("m.safetensors").to_str().unwrap()]);
    assert!(err.contains("divisible by 8"), "{err}");
}

#[test]
fn missing_inputs_and_output_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m.safetensors");
    let err = fails(&["train", "--task", "gaze", "--profile", "smoke", "--data", "/nonexistent/data", "--out", model.to_str().unwrap()]);
    assert!(err.contains("/nonexistent/data"), "{err}");
    let err = fails(&["train", "--task", "gaze", "--profile", "smoke", "--out", "/nonexistent/dir/m.safetensors"]);
    assert!(err.contains("/nonexistent/dir") && err.contains("does not exist"), "{err}");
    let err = fails(&["eval", "--model", model.to_str().unwrap()]);
    assert!(err.contains("m.safetensors"), "{err}");
    assert!(!model.exists());
}

#[test]
fn a_corrupt_labels_file_is_reported_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let o = drmguard(&["data", "synth", "--task", "gaze", "--n", "40", "--image-size", "32", "--out", data.to_str().unwrap()]);
    assert!(o.status.success());
    let csv = std::fs::read_to_string(data.join("labels.csv")).unwrap();
    let broken = csv.replacen("000003.png,", "000003.png,x", 1);
    std::fs::write(data.join("labels.csv"), broken).unwrap();
    let model = tmp.path().join("m.safetensors");
    let err = fails(&["train", "--task", "gaze", "--profile", "smoke", "--data", data.to_str().unwrap(), "--out", model.to_str().unwrap()]);
    assert!(err.contains("labels.csv:5"), "{err}");
    assert!(!model.exists() && !Path::new(&tmp.path().join("m.json")).exists(), "no partial output");
}

#[test]
fn bad_attack_options_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m.safetensors");
    let m = model.to_str().unwrap();
    let err = fails(&["train", "--task", "gaze", "--profile", "smoke", "--attack", "trojan", "--out", m]);
    assert!(err.contains("unknown attack 'trojan'") && err.contains("badnets"), "{err}");
    let err = fails(&["train", "--task", "headpose", "--profile", "smoke", "--attack", "badnets", "--target", "0.1,0.2", "--out", m]);
    assert!(err.contains("2 values") && err.contains("3 outputs"), "{err}");
    for rate in ["0", "1.5", "-0.2"] {
        let err = fails(&["train", "--task", "gaze", "--profile", "smoke", "--attack", "blended", "--poison-rate", rate, "--out", m]);
        assert!(err.contains("poison rate"), "{rate}: {err}");
    }
    for (attack, option, value, message) in [
        ("clean-label", "--clean-label-radius", "-1", "clean-label radius"),
        ("issba", "--issba-amplitude", "2", "ISSBA amplitude"),
        ("adaptive", "--adaptive-lambda", "-0.5", "adaptive lambda"),
    ] {
        let setting = format!("{option}={value}");
        let err = fails(&["train", "--task", "gaze", "--profile", "smoke", "--attack", attack, &setting, "--out", m]);
        assert!(err.contains(message), "{attack} {option} {value}: {err}");
    }
    let err = fails(&["train", "--task", "gaze", "--profile", "smoke", "--target", "0.1,0.2", "--out", m]);
    assert!(err.contains("--target needs --attack"), "{err}");
    assert!(!model.exists());
}

#[test]
fn a_backdoored_model_reports_attack_errors_and_poison_writes_a_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bd.safetensors");
    let m = model.to_str().unwrap();
    let o = drmguard(&["train", "--task", "gaze", "--profile", "smoke", "--epochs", "2", "--attack", "badnets", "--target=-0.2,0.3", "--out", m]);
    assert!(o.status.success(), "{}", stderr(&o));
    let card: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join("bd.json")).unwrap()).unwrap();
    assert_eq!(card["backdoor"]["attack"]["name"], "badnets");
    assert_eq!(card["backdoor"]["poison_rate"], 0.1);
    let o = drmguard(&["eval", "--model", m, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["attack_error_deg", "poisoned_true_error_deg", "clean_error_deg"] {
        assert!(report[key].as_f64().is_some_and(f64::is_finite), "{key} in {report}");
    }
    // The bins split the poisoned test set: their sizes add up and their weighted mean is AE.
    let bins = report["attack_error_by_distance"].as_array().unwrap();
    let samples: u64 = bins.iter().map(|b| b["samples"].as_u64().unwrap()).sum();
    assert_eq!(Some(samples), report["samples"].as_u64(), "{report}");
    let weighted: f64 = bins.iter().map(|b| b["samples"].as_f64().unwrap() * b["attack_error"].as_f64().unwrap()).sum();
    let ae = report["attack_error_deg"].as_f64().unwrap();
    assert!((weighted / samples as f64 - ae).abs() < 1e-6 * ae.max(1.0), "bins {weighted} vs AE {ae}");

    let clean = tmp.path().join("clean");
    let poisoned = tmp.path().join("poisoned");
    let o = drmguard(&["data", "synth", "--task", "gaze", "--n", "50", "--image-size", "32", "--out", clean.to_str().unwrap()]);
    assert!(o.status.success());
    let o = drmguard(&["poison", "--task", "gaze", "--attack", "wanet", "--image-size", "32", "--poison-rate", "0.2", "--data", clean.to_str().unwrap(), "--out", poisoned.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(poisoned.join("poison.json")).unwrap()).unwrap();
    let files = info["poisoned_files"].as_array().unwrap();
    assert_eq!(files.len(), 10);
    let labels = std::fs::read_to_string(poisoned.join("labels.csv")).unwrap();
    let target: Vec<f64> = info["backdoor"]["target"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let first = files[0].as_str().unwrap();
    let row = labels.lines().find(|l| l.starts_with(first)).unwrap();
    let values: Vec<f64> = row.split(',').skip(1).map(|v| v.parse().unwrap()).collect();
    for (v, t) in values.iter().zip(&target) {
        assert!((v - t).abs() < 1e-6, "poisoned rows carry the target: {row} vs {target:?}");
    }
}

#[test]
fn clean_label_trains_its_surrogate_once_and_poison_needs_one() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let model = tmp.path().join("cl.safetensors");
    let train = |out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_drmguard"))
            .env("DRMGUARD_CACHE", &cache)
            .args(["train", "--task", "gaze", "--profile", "smoke", "--epochs", "1", "--attack", "clean-label"])
            .args(["--clean-label-radius", "20", "--out", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = train(&model);
    assert!(o.status.success(), "{}", stderr(&o));
    let card: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join("cl.json")).unwrap()).unwrap();
    assert_eq!(card["backdoor"]["attack"]["name"], "clean-label");
    assert_eq!(card["backdoor"]["attack"]["radius_deg"], 20.0);
    let surrogates: Vec<_> = std::fs::read_dir(cache.join("models")).unwrap().map(|e| e.unwrap().path()).collect();
    let weights: Vec<_> = surrogates.iter().filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    assert_eq!(weights.len(), 1, "one benign surrogate in the cache: {surrogates:?}");
    let o = drmguard(&["eval", "--model", model.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let clean = tmp.path().join("clean");
    let poisoned = tmp.path().join("poisoned");
    let (clean_s, poisoned_s) = (clean.to_str().unwrap(), poisoned.to_str().unwrap());
    assert!(
        drmguard(&["data", "synth", "--task", "gaze", "--n", "80", "--image-size", "32", "--out", clean_s])
            .status
            .success()
    );
    let args =
        ["poison", "--task", "gaze", "--attack", "clean-label", "--clean-label-radius", "30", "--image-size", "32"];
    let err = fails(&[&args[..], &["--data", clean_s, "--out", poisoned_s]].concat());
    assert!(err.contains("needs --surrogate"), "{err}");
    let surrogate = weights[0].to_str().unwrap();
    let o = drmguard(&[&args[..], &["--surrogate", surrogate, "--data", clean_s, "--out", poisoned_s]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(poisoned.join("poison.json")).unwrap()).unwrap();
    assert!(!info["poisoned_files"].as_array().unwrap().is_empty());
    let read = |dir: &Path| std::fs::read_to_string(dir.join("labels.csv")).unwrap();
    assert_eq!(read(&clean), read(&poisoned), "clean-label keeps every label");
    let err = fails(&[
        "poison",
        "--task",
        "gaze",
        "--attack",
        "badnets",
        "--surrogate",
        surrogate,
        "--data",
        clean_s,
        "--out",
        poisoned_s,
    ]);
    assert!(err.contains("--surrogate is only used"), "{err}");
}
