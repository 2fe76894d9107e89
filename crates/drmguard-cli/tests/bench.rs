//! `drmguard bench --profile smoke`: the whole grid on tiny models, the files it writes and their
//! schema, and that a rerun resumes from the cache.

use std::process::Command;

use serde_json::Value;

fn keys(value: &Value, keys: &[&str], what: &str) {
    for key in keys {
        assert!(value.get(key).is_some(), "{what} lacks {key}: {value}");
    }
}

#[test]
fn the_smoke_benchmark_writes_the_tables_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let bench = |out: &std::path::Path, extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_drmguard"))
            .args(["bench", "--profile", "smoke", "--out", out.to_str().unwrap()])
            .args(extra)
            .env("DRMGUARD_CACHE", tmp.path().join("cache"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    bench(&out, &[]);
    let results: Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    keys(&results, &["config", "drmguard_version", "machine", "models", "detections", "mitigations", "detection_summary", "mitigation_summary", "elapsed_s"], "results.json");
    let config = &results["config"];
    let (tasks, attacks) = (config["tasks"].as_array().unwrap().len(), config["attacks"].as_array().unwrap().len());
    let (detectors, mitigators) = (config["detectors"].as_array().unwrap().len(), config["mitigators"].as_array().unwrap().len());
    let n = config["models_per_class"].as_u64().unwrap() as usize;
    assert_eq!((tasks, attacks, detectors, mitigators, n), (2, 7, 6, 5, 2), "smoke runs every task, attack and defense (the input-agnostic reversal needs a shared clean set)");
    let models = results["models"].as_array().unwrap();
    assert_eq!(models.len(), tasks * (attacks + 1) * n);
    for m in models {
        keys(m, &["id", "task", "attack", "seed", "half", "standing", "target", "path", "train_s", "errors"], "a model record");
        assert_eq!(m["standing"], "unchecked", "smoke models are a schema check, never judged");
        assert_eq!(m["attack"].is_null(), m["errors"]["ae_deg"].is_null(), "backdoored models, and only they, have an AE");
    }
    assert_eq!(results["detections"].as_array().unwrap().len(), models.len() * detectors);
    for d in results["detections"].as_array().unwrap() {
        keys(d, &["model", "detector", "backdoored", "score", "suspicion", "threshold", "elapsed_s"], "a detection");
    }
    let diagnostics = results["diagnostics"].as_array().unwrap();
    assert_eq!(diagnostics.len(), tasks * attacks * n, "every backdoored model's true trigger is measured");
    for d in diagnostics {
        // DRMGuard's measures of the true trigger, and the warp test's.
        for k in ["score", "error_ratio", "spread_ratio", "rav", "warp_spread_ratio"] {
            assert!(d["signals"][k].as_f64().is_some_and(f64::is_finite), "{d}");
        }
    }
    assert_eq!(config["mitigated_per_class"].as_u64(), Some(n as u64), "smoke repairs every backdoored model");
    assert_eq!(results["mitigations"].as_array().unwrap().len(), tasks * attacks * n * mitigators);
    for s in results["detection_summary"].as_array().unwrap() {
        keys(s, &["task", "attack", "detector", "half", "tp", "fp", "fn", "tn", "accuracy", "roc_auc", "mean_seconds"], "a detection summary");
        let counted: u64 = ["tp", "fp", "fn", "tn"].iter().map(|k| s[k].as_u64().unwrap()).sum();
        assert_eq!(counted as usize, n, "each summary counts one half of the attack's and of the benign models");
        let auc = s["roc_auc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auc));
    }
    let signals = results["signal_summary"].as_array().unwrap();
    assert!(signals.iter().any(|s| s["detector"] == "drmguard" && s["signal"] == "error_ratio"), "DRMGuard's signals are summarised");
    for s in signals {
        keys(s, &["task", "attack", "detector", "signal", "high_is_suspicious", "calibration_auc", "test_auc", "calibration_models", "test_models"], "a signal summary");
        let auc = s["calibration_auc"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&auc), "the calibration half sets the direction, so its AUC is at least 0.5: {s}");
    }
    for s in results["mitigation_summary"].as_array().unwrap() {
        keys(s, &["task", "attack", "mitigator", "models", "clean_before_deg", "clean_after_deg", "ae_before_deg", "ae_after_deg", "dae_before_deg", "dae_after_deg", "mean_seconds"], "a mitigation summary");
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for heading in ["## gaze", "## headpose", "### Models per class", "### Identification", "### ROC-AUC", "### Each signal alone", "### Search diagnostic", "### Warp search diagnostic", "### Mitigation", "Compute, summed"] {
        assert!(md.contains(heading), "results.md lacks {heading}");
    }
    assert!(out.join("config.json").is_file());
    for task in ["gaze", "headpose"] {
        // Plots need a TrueType font; CI installs DejaVu Sans.
        if md.contains("![roc_") {
            assert!(out.join(format!("roc_{task}.png")).is_file(), "roc_{task}.png");
            assert!(out.join(format!("scores_{task}_drmguard.png")).is_file());
        }
    }

    // A rerun finds everything in the cache, and one job at a time (the first run had as many
    // as the machine has threads) lists everything in the same order.
    bench(&out, &["--jobs", "1"]);
    let again: Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(again["detections"], results["detections"], "cached scans are reused exactly");
    assert_eq!(again["models"], results["models"]);
    assert_eq!(again["mitigations"], results["mitigations"]);
    assert!(again["elapsed_s"].as_f64().unwrap() < results["elapsed_s"].as_f64().unwrap());

    // `--only-cached` with a third model per class trains and scans nothing: the third models
    // are listed as missing and the tables hold the first two.
    let models_in_cache = || std::fs::read_dir(tmp.path().join("cache").join("models")).unwrap().count();
    let cached_models = models_in_cache();
    let peek = tmp.path().join("peek");
    bench(&peek, &["--only-cached", "--models-per-class", "3", "--detectors", "drmguard", "--mitigators", "ft"]);
    let peeked: Value = serde_json::from_slice(&std::fs::read(peek.join("results.json")).unwrap()).unwrap();
    assert_eq!(models_in_cache(), cached_models, "an --only-cached run trains nothing");
    assert_eq!(peeked["models"].as_array().unwrap().len(), models.len());
    assert_eq!(peeked["detections"].as_array().unwrap().len(), models.len(), "the cached DRMGuard scans");
    let missing: Vec<&str> = peeked["missing"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert_eq!(missing.len(), tasks * (attacks + 1), "{missing:?}");
    assert!(missing.contains(&"train headpose-benign-2"), "{missing:?}");
    assert!(std::fs::read_to_string(peek.join("results.md")).unwrap().contains("**Partial"));
    assert!(results.get("missing").is_none(), "a complete run lists nothing missing");

    // A run of fewer attacks gives each model the seed it has in the full run, so it is the same
    // model, found in the cache.
    let some = tmp.path().join("some");
    bench(&some, &["--tasks", "headpose", "--attacks", "adaptive,wanet", "--detectors", "nc", "--mitigators", "ft"]);
    let part: Value = serde_json::from_slice(&std::fs::read(some.join("results.json")).unwrap()).unwrap();
    let by_id = |r: &Value| -> std::collections::BTreeMap<String, Value> {
        r["models"].as_array().unwrap().iter().map(|m| (m["id"].as_str().unwrap().to_string(), m["seed"].clone())).collect()
    };
    let (full, part) = (by_id(&results), by_id(&part));
    assert_eq!(part.len(), 3 * n);
    for (id, seed) in &part {
        assert_eq!(Some(seed), full.get(id), "{id} has another seed in the full run");
    }
}

/// `bench --zoo`: a manifest of models trained elsewhere (here the ONNX fixture, listed once as
/// benign and once as backdoored), scanned with the smoke profile's DRMGuard on a clean folder;
/// a card that does not exist is reported and the others are still scanned; a manifest without
/// the required columns is refused before anything runs.
#[test]
fn the_zoo_scans_every_model_of_a_manifest_and_reports_the_ones_it_cannot_load() {
    let tmp = tempfile::tempdir().unwrap();
    let drmguard = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_drmguard"));
        c.env("DRMGUARD_CACHE", tmp.path().join("cache"));
        c
    };
    let clean = tmp.path().join("clean");
    let o = drmguard().args(["data", "synth", "--task", "headpose", "--n", "40", "--image-size", "32", "--out", clean.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let card = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../drmguard/tests/fixtures/torch/r34-onnx.toml").canonicalize().unwrap();
    let manifest = tmp.path().join("zoo.csv");
    std::fs::write(
        &manifest,
        format!("model,card,backdoored,attack\nplain,{0},false,\ntrojaned,{0},true,badnets\ngone,missing.toml,false,\n", card.display()),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = drmguard()
        .args(["bench", "--profile", "smoke", "--zoo", manifest.to_str().unwrap(), "--data", clean.to_str().unwrap(), "--detectors", "drmguard,noise"])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("not scanned: gone"), "{stdout}");
    // Neuron noise needs BatchNorm layers, which the ONNX export folded away: its failure on a
    // model leaves that model's other scans standing.
    assert!(stdout.contains("not scanned by noise: plain"), "{stdout}");
    let results: Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    keys(&results, &["config", "scans", "failures", "summary", "elapsed_s"], "zoo results.json");
    let scans = results["scans"].as_array().unwrap();
    assert_eq!(scans.len(), 2, "one detector on the two models that load");
    for s in scans {
        keys(s, &["model", "task", "backdoored", "attack", "detector", "flagged", "score", "suspicion", "elapsed_s"], "a zoo scan");
    }
    assert_eq!(scans[0]["score"], scans[1]["score"], "the same model scanned twice gives the same scan (the second from the cache)");
    let failures = results["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "the missing model, and neuron noise on the two others: {failures:?}");
    assert!(failures[2]["error"].as_str().unwrap().contains("missing.toml"), "{}", failures[2]);
    assert!(failures[2].get("detector").is_none(), "{}", failures[2]);
    assert_eq!(failures[0]["detector"], "noise");
    let summary = results["summary"].as_array().unwrap();
    let attacks: Vec<&str> = summary.iter().map(|s| s["attack"].as_str().unwrap()).collect();
    assert_eq!(attacks, ["badnets", "all"]);
    for s in summary {
        let counted: u64 = ["tp", "fp", "fn", "tn"].iter().map(|k| s[k].as_u64().unwrap()).sum();
        assert_eq!(counted, 2);
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("## Not scanned") && md.contains("| trojaned |"), "{md}");

    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "name,path\na,b\n").unwrap();
    let o = drmguard().args(["bench", "--zoo", bad.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("model, card, backdoored"), "{stderr}");
}
