//! Models exported by `torch.onnx.export` (tools/make_onnx_fixtures.py): a torchvision-style
//! ResNet-18, a small CNN that uses every other supported operator, and an ONet-shaped model with
//! three outputs whose flattening shape is computed at run time. Their outputs and the gradients
//! of the outputs' sum (to the input and to one parameter) match PyTorch's.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use drmguard_onnx::{OnnxModel, Value, tensor};

#[path = "support/reference.rs"]
mod reference;
use reference::read_safetensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn values(v: Value) -> Vec<f32> {
    let n = v.dims().iter().product();
    v.f1("test value").unwrap().into_data().try_to_vec::<f32>().unwrap().into_iter().take(n).collect()
}

/// Largest difference relative to the reference's largest magnitude.
fn max_rel_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    let scale = theirs.iter().fold(1e-20f32, |m, v| m.max(v.abs()));
    ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale
}

#[test]
fn exports_match_pytorch_outputs_and_gradients() {
    let reference = read_safetensors(&fixture("reference.safetensors"));
    let (shape, input) = &reference["input"];
    let device = Device::flex();
    let ad = device.clone().autodiff();
    // heads.onnx's reference is its second output, the landmarks.
    for (name, output) in [("r18", 0), ("zoo", 0), ("heads", 1)] {
        let model = OnnxModel::load(&fixture(&format!("{name}.onnx")), &ad).unwrap_or_else(|e| panic!("{name}: {e}"));
        let x = tensor(input.clone(), shape, &ad).unwrap().f4("input").unwrap().require_grad();
        let outputs = model.forward(x.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let y = outputs.into_iter().nth(output).unwrap();
        let (out_shape, expected) = &reference[&format!("{name}.output")];
        assert_eq!(&y.dims(), out_shape, "{name}");
        let y2 = y.f2("output").unwrap();
        let diff = max_rel_diff(&values(Value::F2(y2.clone())), expected);
        assert!(diff < 1e-4, "{name}: outputs differ from PyTorch's by {diff}");

        let grads = y2.sum().backward();
        let gx = x.grad(&grads).expect("a gradient to the input");
        let diff = max_rel_diff(&values(Value::F4(gx)), &reference[&format!("{name}.input_grad")].1);
        assert!(diff < 1e-4, "{name}: input gradients differ by {diff}");
        // The one initializer of the reference's shape (ONNX initializer names are not kept).
        let (p_shape, p_grad) = &reference[&format!("{name}.param_grad")];
        let matching: Vec<usize> = model.parameters().enumerate().filter(|(_, (_, s))| s == p_shape).map(|(i, _)| i).collect();
        assert_eq!(matching.len(), 1, "{name}: one parameter of shape {p_shape:?}");
        let gp = model.params[matching[0]].val().grad(&grads).expect("a gradient to the parameter");
        let diff = max_rel_diff(&values(Value::F1(gp)), p_grad);
        assert!(diff < 1e-4, "{name}: parameter gradients differ by {diff}");
    }
}

#[test]
fn the_graph_splits_into_features_and_a_linear_head() {
    let device = Device::flex();
    let model = OnnxModel::load(&fixture("r18.onnx"), &device).unwrap();
    let head = model.linear_head(0).expect("a linear head");
    assert_eq!(head.weight.dims(), [16, 2], "ResNet-18 of stem width 2 pools 16 features");
    let reference = read_safetensors(&fixture("reference.safetensors"));
    let (shape, input) = &reference["input"];
    let x = tensor(input.clone(), shape, &device).unwrap().f4("input").unwrap();
    let z = model.value_at(x.clone(), &head.features).unwrap().f2("features").unwrap();
    let y = z.clone().matmul(head.weight.clone()) + head.bias.clone().unwrap().reshape([1, -1]);
    let direct = model.forward(x.clone()).unwrap().remove(0);
    assert!(max_rel_diff(&values(Value::F2(y)), &values(direct)) < 1e-6);

    // The last 4-D value that separates the graph: the input of global average pooling.
    let shapes = model.shapes(x.clone()).unwrap();
    let (cut, _) = shapes.iter().rev().find(|(name, dims)| dims.len() == 4 && model.is_cut(name)).unwrap();
    let h = model.value_at(x, cut).unwrap();
    let resumed = model.resume(cut, h, &head.features).unwrap().f2("features").unwrap();
    assert!(max_rel_diff(&values(Value::F2(resumed)), &values(Value::F2(z))) < 1e-6);
    // A value inside a residual block does not separate the graph.
    let inside = shapes.iter().find(|(name, dims)| dims.len() == 4 && !model.is_cut(name));
    assert!(inside.is_some(), "residual blocks read values from before their convolutions");
    assert_eq!(model.op_counts().get("Conv"), Some(&20));
}

#[test]
fn a_multi_output_graph_keeps_its_output_names_and_one_head_per_output() {
    let device = Device::flex();
    let model = OnnxModel::load(&fixture("heads.onnx"), &device).unwrap();
    assert_eq!(model.output_names(), ["box", "landmarks", "prob"], "the file's names, not onnx-ir's");
    assert_eq!(model.linear_head(0).unwrap().weight.dims(), [12, 4]);
    let landmarks = model.linear_head(1).unwrap();
    assert_eq!(landmarks.weight.dims(), [12, 10]);
    let err = model.linear_head(2).err().expect("prob is a Softmax").to_string();
    assert!(err.contains("prob") && err.contains("not by a linear layer"), "{err}");
    // `x.view(x.size(0), -1)` reads the batch size at run time: any batch runs.
    for n in [1, 3] {
        let x = burn::tensor::Tensor::<4>::zeros([n, 3, 16, 16], &device);
        let z = model.value_at(x, &landmarks.features).unwrap();
        assert_eq!(z.dims(), [n, 12]);
    }
    let ops = model.op_counts();
    for op in ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Softmax"] {
        assert_eq!(ops.get(op), Some(&1), "{op} in {ops:?}");
    }
}

#[test]
fn an_affine_tail_is_read_by_probing_and_a_nonlinear_one_is_refused() {
    let device = Device::flex();
    let reference = read_safetensors(&fixture("reference.safetensors"));
    let (shape, input) = &reference["input"];
    let x = tensor(input.clone(), shape, &device).unwrap().f4("input").unwrap();
    let cut_of_width = |model: &OnnxModel, width: usize| -> Vec<String> {
        let shapes = model.shapes(x.clone()).unwrap();
        shapes.into_iter().filter(|(n, d)| *d == [2, width] && model.is_cut(n)).map(|(n, _)| n).collect()
    };

    // zoo ends in (z @ W + b) / 1.5: no linear layer computes its output, but it is affine in z.
    let zoo = OnnxModel::load(&fixture("zoo.onnx"), &device).unwrap();
    assert!(zoo.linear_head(0).is_err(), "a Div computes zoo's output");
    let z_name = cut_of_width(&zoo, 20).pop().expect("the 20 features before the head");
    let z = zoo.value_at(x.clone(), &z_name).unwrap().f2("z").unwrap();
    let head = zoo.probed_head(&z_name, 0, z.clone()).unwrap();
    let y = z.matmul(head.weight.clone()) + head.bias.clone().unwrap().reshape([1, -1]);
    let direct = zoo.forward(x.clone()).unwrap().remove(0);
    assert!(max_rel_diff(&values(Value::F2(y)), &values(direct)) < 1e-5);

    // On a real linear layer, probing gives its weights back.
    let heads = OnnxModel::load(&fixture("heads.onnx"), &device).unwrap();
    let linear = heads.linear_head(1).unwrap();
    let z = heads.value_at(x.clone(), &linear.features).unwrap().f2("z").unwrap();
    let probed = heads.probed_head(&linear.features, 1, z).unwrap();
    let flat = |t: burn::tensor::Tensor<2>| values(Value::F2(t));
    assert!(max_rel_diff(&flat(probed.weight), &flat(linear.weight)) < 1e-5);
    // Before the last PRelu, the landmarks are not affine in the value.
    let before = cut_of_width(&heads, 12).into_iter().find(|n| *n != linear.features).expect("the dense layer's output");
    let z = heads.value_at(x, &before).unwrap().f2("z").unwrap();
    let err = heads.probed_head(&before, 1, z).err().expect("a PRelu is not affine").to_string();
    assert!(err.contains("not an affine function"), "{err}");
}

#[test]
fn bad_files_give_errors_not_panics() {
    let device = Device::flex();
    let tmp = std::env::temp_dir().join(format!("drmguard-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let good = std::fs::read(fixture("zoo.onnx")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("text", b"this is not an ONNX model".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("noise", (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect()),
    ];
    for (what, bytes) in cases {
        let path = tmp.join(format!("{what}.onnx"));
        std::fs::write(&path, bytes).unwrap();
        let err = OnnxModel::load(&path, &device).err().unwrap_or_else(|| panic!("{what} loaded"));
        assert!(err.to_string().contains(&format!("{what}.onnx")), "{what}: {err}");
    }
    let err = OnnxModel::load(&tmp.join("missing.onnx"), &device).err().unwrap();
    assert!(err.to_string().contains("missing.onnx"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
