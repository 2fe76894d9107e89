//! Models trained elsewhere through the CLI: `inspect` on bare weights and on a card, then `scan`,
//! `mitigate` and `eval` on the PyTorch fixtures of `tools/make_torch_fixtures.py`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn drmguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drmguard")).args(args).output().expect("the binary runs")
}

fn succeeds(args: &[&str]) -> String {
    let o = drmguard(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../drmguard/tests/fixtures/torch").join(name)
}

/// DRMGuard's generator test (the `scan` default is the input-agnostic reversal), made fast.
const FAST: [&str; 8] = ["--defense", "drmguard", "--drmguard-test", "generator", "--steps", "3", "--batch-size", "8"];

#[test]
fn inspect_explains_bare_weights_and_prints_a_card_to_fill_in() {
    let out = succeeds(&["inspect", fixture("r18.pth").to_str().unwrap()]);
    for needle in ["weights without a card", "resnet18, stem width 2", "parameters  11524", "\"state_dict.module.\" stripped", "missing     a model card", "[input]", "units = \"radians\""] {
        assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    }
    let json: serde_json::Value = serde_json::from_str(&succeeds(&["inspect", fixture("r50.pt").to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(json["architecture"], "resnet50");
    assert_eq!(json["stages"].as_array().unwrap().last().unwrap()["output_shape"], serde_json::json!([3]));
}

#[test]
fn an_imported_model_is_scanned_repaired_and_evaluated() {
    let tmp = tempfile::tempdir().unwrap();
    let card = fixture("r34.toml");
    let card = card.to_str().unwrap();
    let data = tmp.path().join("clean");
    succeeds(&["data", "synth", "--task", "headpose", "--n", "24", "--image-size", "32", "--out", data.to_str().unwrap()]);
    let data = data.to_str().unwrap();

    let out = succeeds(&["inspect", card]);
    assert!(out.contains("imported model") && out.contains("ready       yes"), "{out}");

    // Without clean images there is nothing to scan with: the message says what to pass.
    let o = drmguard(&["scan", "--model", card, "--out", tmp.path().join("nope").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--data") && !err.contains("panicked"), "{err}");

    let scan = tmp.path().join("scan");
    let mut args = vec!["scan", "--model", card, "--data", data, "--out", scan.to_str().unwrap()];
    args.extend(FAST);
    succeeds(&args);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(scan.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["estimated_target"].as_array().unwrap().len(), 3);

    let eval: serde_json::Value = serde_json::from_str(&succeeds(&["eval", "--model", card, "--data", data, "--split", "all", "--json"])).unwrap();
    assert_eq!(eval["samples"], 24);

    // The repaired model is a drmguard model that remembers where it came from.
    let fixed = tmp.path().join("fixed.safetensors");
    let mut args = vec!["mitigate", "--model", card, "--data", data, "--out", fixed.to_str().unwrap(), "--unlearn-epochs", "1", "--unlearn-batch-size", "8"];
    args.extend(FAST);
    succeeds(&args);
    let out = succeeds(&["inspect", fixed.to_str().unwrap()]);
    assert!(out.contains("imported model") && out.contains("repaired    yes") && out.contains("resnet34"), "{out}");
    succeeds(&["eval", "--model", fixed.to_str().unwrap(), "--data", data, "--split", "all"]);
}

#[test]
fn an_onnx_export_and_the_state_dict_of_one_model_get_the_same_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("clean");
    succeeds(&["data", "synth", "--task", "headpose", "--n", "24", "--image-size", "32", "--out", data.to_str().unwrap()]);
    let mut reports = Vec::new();
    for card in ["r34.toml", "r34-onnx.toml"] {
        let out = tmp.path().join(card);
        let card = fixture(card);
        let mut args = vec!["scan", "--model", card.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend(FAST);
        succeeds(&args);
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        reports.push(report);
    }
    assert_eq!(reports[0]["backdoored"], reports[1]["backdoored"]);
    let (a, b) = (reports[0]["score"].as_f64().unwrap(), reports[1]["score"].as_f64().unwrap());
    assert!((a - b).abs() <= 1e-3 * a.abs().max(1e-6), "scores {a} (state dict) and {b} (ONNX)");

    // ANP needs BatchNorm layers, which the ONNX export folded away: a clear refusal.
    let anp = tmp.path().join("anp.safetensors");
    let o = drmguard(&["mitigate", "--model", fixture("r34-onnx.toml").to_str().unwrap(), "--data", data.to_str().unwrap(), "--defense", "anp", "--out", anp.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("BatchNorm") && !err.contains("panicked") && !anp.exists(), "{err}");

    let out = succeeds(&["inspect", fixture("r34.onnx").to_str().unwrap()]);
    assert!(out.contains("ONNX graph without a card") && out.contains("Conv ×36") && out.contains("16 features"), "{out}");
}
