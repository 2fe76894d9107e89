//! Models trained elsewhere: the PyTorch fixtures of `tools/make_torch_fixtures.py` (torchvision
//! ResNet-18/34/50 in a nested `.pth`, in safetensors and in a plain `.pt`) load through their
//! TOML cards and reproduce PyTorch's outputs and input gradients, and malformed files are refused
//! with clear errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use drmguard::model_file::{self, import};
use drmguard::models::Regressor;

#[path = "../../drmguard-onnx/tests/support/reference.rs"]
mod reference;
use reference::read_safetensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch")
}

fn tensor<const D: usize>((shape, values): &(Vec<usize>, Vec<f32>), device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.clone(), shape.clone()), device)
}

fn max_abs_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn pytorch_fixtures_match_their_reference_outputs_and_gradients() {
    let device = Device::flex();
    let reference = read_safetensors(&fixtures().join("reference.safetensors"));
    // r34-onnx is r34 exported by torch.onnx.export, run by drmguard-onnx: same references.
    for (card_name, name, architecture) in [
        ("r18", "r18", "resnet18"),
        ("r34", "r34", "resnet34"),
        ("r50", "r50", "resnet50"),
        ("r34-onnx", "r34", "onnx"),
    ] {
        let (model, card) = model_file::load(&fixtures().join(format!("{card_name}.toml")), &device)
            .unwrap_or_else(|e| panic!("{card_name}: {e}"));
        assert_eq!(card.model.architecture.name(), architecture, "{card_name}");
        assert!(card.trained.is_none() && card.imported.is_some());

        let x: Tensor<4> = tensor(&reference["input"], &device);
        let expected: Tensor<2> = tensor(&reference[&format!("{name}.output")], &device);
        let diff = max_abs_diff(model.forward(x.clone()), expected.clone());
        assert!(diff < 1e-4, "{card_name}: outputs differ from PyTorch's by {diff}");

        let ad = device.clone().autodiff();
        let frozen = model.fork(&ad).freeze();
        let xg: Tensor<4> = tensor::<4>(&reference["input"], &ad).require_grad();
        let grads = frozen.forward(xg.clone()).sum().backward();
        let grad = xg.grad(&grads).expect("a gradient to the input");
        let [n, c, h, w] = grad.dims();
        let expected_grad: Tensor<4> = tensor(&reference[&format!("{name}.input_grad")], &device);
        let scale = expected_grad.clone().abs().max().into_scalar::<f32>().max(1e-12);
        let diff = max_abs_diff(grad.fork(&device).reshape([n, c * h * w]), expected_grad.reshape([n, c * h * w]));
        assert!(diff < 1e-4 * scale, "{card_name}: input gradients differ from PyTorch's by {diff} (scale {scale})");
    }
}

#[test]
fn a_nested_checkpoint_is_found_by_its_stem_and_its_extra_entries_are_ignored() {
    let (_, card) = model_file::load(&fixtures().join("r18.toml"), &Device::flex()).unwrap();
    let record = card.imported.unwrap();
    assert_eq!(record.stripped_prefix, "state_dict.module.");
    assert_eq!(record.weights_sha256.len(), 64);
    // The checkpoint's `epoch` is not a tensor; BatchNorm's counters are not listed.
    assert!(record.ignored_tensors.is_empty(), "{:?}", record.ignored_tensors);
}

#[test]
fn inference_reads_the_architecture_from_the_weights() {
    // Parameter counts as PyTorch's `sum(p.numel() for p in model.parameters())` gives them.
    for (file, name, features, parameters) in
        [("r18.pth", "resnet18", 16, 11524), ("r34.safetensors", "resnet34", 16, 21637), ("r50.pt", "resnet50", 64, 25045)]
    {
        let dict = import::read_state_dict(&fixtures().join(file), None, &[]).unwrap();
        let inferred = dict.infer().unwrap();
        assert_eq!((inferred.architecture.name(), inferred.features, inferred.parameters), (name, features, parameters), "{file}");
    }
}

/// Copies a fixture card (and its weights, possibly altered) into a scratch folder.
fn scratch_card(root: &Path, case: &str, card: &str, edit_card: impl Fn(String) -> String, weights: Option<(&str, Vec<u8>)>) -> PathBuf {
    let dir = root.join(case.replace(' ', "-"));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(fixtures().join(card)).unwrap();
    let weights_name = text.lines().find_map(|l| l.strip_prefix("weights = ")).unwrap().trim_matches('"').to_string();
    let (name, bytes) = match weights {
        Some((name, bytes)) => (name.to_string(), bytes),
        None => (weights_name.clone(), std::fs::read(fixtures().join(&weights_name)).unwrap()),
    };
    std::fs::write(dir.join(&name), bytes).unwrap();
    let path = dir.join(card);
    std::fs::write(&path, edit_card(text.replace(&weights_name, &name))).unwrap();
    path
}

fn load_error(card: &Path) -> String {
    match model_file::load(card, &Device::flex()) {
        Ok(_) => panic!("{} loaded", card.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_cards_and_weights_are_refused_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let same = |s: String| s;
    let original = std::fs::read(fixtures().join("r34.safetensors")).unwrap();
    let pth = std::fs::read(fixtures().join("r18.pth")).unwrap();

    let cases: Vec<(&str, PathBuf, &[&str])> = vec![
        ("truncated safetensors", scratch_card(dir, "truncated safetensors", "r34.toml", same, Some(("cut.safetensors", original[..original.len() / 2].to_vec()))), &["cut.safetensors"]),
        ("wrong magic", scratch_card(dir, "wrong magic", "r34.toml", same, Some(("junk.safetensors", b"not a safetensors file at all".to_vec()))), &["junk.safetensors"]),
        ("truncated pth", scratch_card(dir, "truncated pth", "r18.toml", same, Some(("cut.pth", pth[..pth.len() / 3].to_vec()))), &["cut.pth"]),
        ("random pth", scratch_card(dir, "random pth", "r18.toml", same, Some(("noise.pth", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()))), &["noise.pth"]),
        ("wrong architecture", scratch_card(dir, "wrong architecture", "r34.toml", |s| s.replace("task =", "architecture = \"resnet50\"\ntask ="), None), &["resnet50", "resnet34"]),
        ("output names", scratch_card(dir, "output names", "r34.toml", |s| s.replace("\"-pitch\"", "\"tilt\""), None), &["pitch", "missing"]),
        ("too few outputs", scratch_card(dir, "too few outputs", "r18.toml", |s| s.replace("names = [\"pitch\", \"yaw\"]", "names = [\"pitch\"]"), None), &["1 names for 2 outputs"]),
        ("task of other size", scratch_card(dir, "task of other size", "r18.toml", |s| s.replace("task = \"gaze\"", "task = \"headpose\"").replace("names = [\"pitch\", \"yaw\"]", "names = [\"yaw\", \"pitch\", \"roll\"]"), None), &["2 outputs", "3"]),
        ("typo in a key", scratch_card(dir, "typo in a key", "r34.toml", |s| s.replace("channel_order", "channel_ordre"), None), &["channel_ordre"]),
        ("absurd size", scratch_card(dir, "absurd size", "r34.toml", |s| s.replace("size = 32", "size = 4000000000"), None), &["image size"]),
        ("zero std", scratch_card(dir, "zero std", "r34.toml", |s| s.replace("std = [0.229", "std = [0.0"), None), &["std"]),
        ("missing weights", scratch_card(dir, "missing weights", "r34.toml", |s| s.replace("r34.safetensors", "gone.safetensors"), None), &["gone.safetensors"]),
    ];
    for (what, card, needles) in cases {
        let err = load_error(&card);
        for needle in needles {
            assert!(err.contains(needle), "{what}: {err:?} should mention {needle:?}");
        }
    }

    // A state dict that lacks a tensor names it.
    let mut tensors = read_safetensors(&fixtures().join("r34.safetensors"));
    tensors.remove("layer2.0.bn1.running_var");
    let card = scratch_card(dir, "partial", "r34.toml", same, Some(("partial.safetensors", write_safetensors(&tensors))));
    let err = load_error(&card);
    assert!(err.contains("layer2.0.bn1.running_var") || err.contains("layer2.0.bn1"), "{err}");

    // Absurd dimensions in the header are refused without allocating them.
    let mut tensors = read_safetensors(&fixtures().join("r34.safetensors"));
    tensors.get_mut("fc.weight").unwrap().0 = vec![1 << 40, 1 << 40];
    let card = scratch_card(dir, "absurd", "r34.toml", same, Some(("absurd.safetensors", write_safetensors(&tensors))));
    let err = load_error(&card);
    assert!(err.contains("absurd.safetensors"), "{err}");

    // A shape that disagrees with the architecture is refused.
    let mut tensors = read_safetensors(&fixtures().join("r34.safetensors"));
    tensors.get_mut("layer3.1.conv2.weight").unwrap().0 = vec![8, 4, 3, 6];
    let card = scratch_card(dir, "reshaped", "r34.toml", same, Some(("reshaped.safetensors", write_safetensors(&tensors))));
    let err = load_error(&card);
    assert!(err.contains("shape"), "{err}");
}

fn write_safetensors(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (shape, values)) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    out
}

/// The ONet-shaped fixture of drmguard-onnx (`heads.onnx`: outputs box, landmarks, prob).
fn heads_card(dir: &Path, name: &str, output: &str) -> PathBuf {
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("../drmguard-onnx/tests/fixtures/heads.onnx");
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    let card = format!(
        "task = \"landmarks\"\nweights = {:?}\n\n[input]\nsize = 16\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n\n[output]\n{output}\n",
        graph.to_str().unwrap()
    );
    std::fs::write(&path, card).unwrap();
    path
}

#[test]
fn a_landmark_model_is_picked_from_a_multi_output_graph_and_mapped_to_drmguards_order() {
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("drmguard-heads-{}", std::process::id()));
    // MTCNN's order (five x, then five y), in pixels of the 16-pixel input.
    let names = r#"names = ["left_eye_x", "right_eye_x", "nose_x", "mouth_left_x", "mouth_right_x", "left_eye_y", "right_eye_y", "nose_y", "mouth_left_y", "mouth_right_y"]"#;
    let card = heads_card(&dir, "ok", &format!("{names}\nunits = \"pixels\"\ngraph_output = \"landmarks\""));
    let (model, imported) = model_file::load(&card, &device).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(imported.output_units, "fraction of the image side");
    let onnx_reference = read_safetensors(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../drmguard-onnx/tests/fixtures/reference.safetensors"));
    let x: Tensor<4> = tensor(&onnx_reference["input"], &device);
    let ours = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
    let (_, torch) = &onnx_reference["heads.output"];
    for row in 0..2 {
        for point in 0..5 {
            for (axis, source) in [(0, point), (1, 5 + point)] {
                let (a, b) = (ours[row * 10 + 2 * point + axis], torch[row * 10 + source] / 16.0);
                assert!((a - b).abs() < 1e-5, "sample {row}, point {point}, axis {axis}: {a} vs {b}");
            }
        }
    }

    let refused = [
        ("no graph output", format!("{names}\nunits = \"pixels\""), vec!["3 outputs", "box, landmarks, prob", "graph_output"]),
        ("unknown output", format!("{names}\nunits = \"pixels\"\ngraph_output = \"points\""), vec!["points", "box, landmarks, prob"]),
        ("softmax output", format!("{names}\nunits = \"pixels\"\ngraph_output = \"prob\""), vec!["prob", "not by a linear layer"]),
        ("angle units", format!("{names}\nunits = \"degrees\"\ngraph_output = \"landmarks\""), vec!["degrees", "fraction or pixels"]),
        ("sign flip", format!("{}\nunits = \"fraction\"\ngraph_output = \"landmarks\"", names.replace("\"nose_x\"", "\"-nose_x\"")), vec!["-nose_x", "sign flip"]),
    ];
    for (case, output, expected) in refused {
        let err = load_error(&heads_card(&dir, &case.replace(' ', "-"), &output));
        for e in expected {
            assert!(err.contains(e), "{case}: {err:?} should mention {e:?}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_onnx_head_that_is_affine_but_not_one_layer_is_read_from_the_named_features() {
    // zoo.onnx ends in (z @ W + b) / 1.5: its output is not one linear layer's, so the card names
    // z, the Concat before the head, by the name `drmguard inspect zoo.onnx` lists.
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("drmguard-zoo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("../drmguard-onnx/tests/fixtures/zoo.onnx");
    let card = |features: &str| {
        let path = dir.join(format!("zoo-{}.toml", features.len()));
        let text = format!(
            "task = \"headpose\"\nweights = {:?}\n\n[input]\nsize = 16\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n\n[output]\nnames = [\"yaw\", \"pitch\", \"roll\"]\nunits = \"radians\"\n{features}\n",
            graph.to_str().unwrap()
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let err = load_error(&card(""));
    assert!(err.contains("Div") && err.contains("not by a linear layer"), "{err}");
    let (model, _) = model_file::load(&card("features = \"concat3_out1\""), &device).unwrap_or_else(|e| panic!("{e}"));
    let reference = read_safetensors(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../drmguard-onnx/tests/fixtures/reference.safetensors"));
    let x: Tensor<4> = tensor(&reference["input"], &device);
    let expected: Tensor<2> = tensor(&reference["zoo.output"], &device);
    let diff = max_abs_diff(model.forward(x), expected);
    assert!(diff < 1e-5, "the probed head differs from PyTorch's output by {diff}");
    // The value before the last nonlinearity is refused: the rest of the graph is not affine in it.
    let err = load_error(&card("features = \"sub2_out1\""));
    assert!(err.contains("not an affine function of sub2_out1"), "{err}");
    let err = load_error(&card("features = \"nowhere\""));
    assert!(err.contains("nowhere"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
