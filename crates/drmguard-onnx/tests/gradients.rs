//! Finite-difference checks of the autodiff gradients, independent of PyTorch: on the three
//! exported fixtures, which between them use every supported operator, the derivative of a fixed
//! weighting of the outputs along a random direction, to the input and to every parameter
//! tensor, equals the central difference quotient of the forward pass.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use drmguard_onnx::{OnnxModel, tensor};

#[path = "support/reference.rs"]
mod reference;
use reference::read_safetensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Fixed pseudo-random values in [−1, 1].
fn noise(n: usize, salt: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = (i.wrapping_add(salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// f = Σ w ⊙ y for output `output`, as a rank-1 tensor of one element.
fn objective(model: &OnnxModel, x: Tensor<4>, output: usize) -> Tensor<1> {
    let y = model.forward(x).unwrap().remove(output).f2("output").unwrap();
    let [n, d] = y.dims();
    let w = Tensor::<2>::from_data(TensorData::new(noise(n * d, 7), [n, d]), &y.device());
    (y * w).sum()
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

/// Steps of the central differences. In f32, a large step crosses the kinks of MaxPool, Relu
/// and PRelu and a small one drowns in rounding, so the check asks that some step in this range
/// agree within 5%: a wrong gradient (a factor, a sign, a missing term) agrees at none. (The
/// ONet-shaped model bends within 1e-4 of its input along the test direction: PyTorch in f64
/// gives quotients 0.00599, 0.00794, 0.01455 at steps 1e-2, 1e-3, 1e-4 and its autograd's
/// 0.0149364 only from 1e-5 on; drmguard-onnx's gradient is 0.0149364 too.)
const STEPS: [f32; 6] = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5];

/// The central difference quotients of `f` along the direction it moves in, at each step,
/// against the analytic directional derivative: within 5% at one step at least.
fn agree(what: &str, analytic: f64, f: impl Fn(f32) -> f64) {
    let numeric: Vec<f64> = STEPS.iter().map(|&e| (f(e) - f(-e)) / (2.0 * e as f64)).collect();
    let close = |n: &f64| (analytic - n).abs() <= 0.05 * analytic.abs().max(n.abs()).max(1e-3);
    assert!(numeric.iter().any(close), "{what}: autodiff {analytic:.6e}, finite differences {numeric:?} at steps {STEPS:?}");
}

fn check(name: &str, output: usize) {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let reference = read_safetensors(&fixture("reference.safetensors"));
    let (shape, input) = &reference["input"];
    let model = OnnxModel::load(&fixture(name), &ad).unwrap_or_else(|e| panic!("{name}: {e}"));
    let x = tensor(input.clone(), shape, &ad).unwrap().f4("input").unwrap();

    // To the input.
    let xg = x.clone().require_grad();
    let grads = objective(&model, xg.clone(), output).backward();
    let gx = xg.grad(&grads).expect("a gradient to the input");
    let direction = TensorData::new(noise(input.len(), 1), shape.clone());
    let analytic = scalar((gx * Tensor::<4>::from_data(direction.clone(), &device)).sum());
    let v = Tensor::<4>::from_data(direction, &ad);
    agree(&format!("{name}: input"), analytic, |e| scalar(objective(&model, x.clone() + v.clone() * e, output)));

    // To every parameter tensor, one direction each.
    let grads = objective(&model, x.clone(), output).backward();
    let shapes: Vec<Vec<usize>> = model.parameters().map(|(_, s)| s.to_vec()).collect();
    for (k, shape) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let Some(g) = model.params[k].val().grad(&grads) else {
            // A parameter the chosen output does not read (another head).
            continue;
        };
        let direction = TensorData::new(noise(n, 100 + k as u64), [n]);
        let analytic = scalar((g * Tensor::<1>::from_data(direction.clone(), &device)).sum());
        let base: Vec<f32> = model.params[k].val().into_data().try_to_vec::<f32>().unwrap();
        let moved = |e: f32| {
            let values: Vec<f32> = base.iter().zip(direction.as_slice::<f32>().unwrap()).map(|(b, d)| b + e * d).collect();
            let mut m = model.clone();
            m.params[k] = Param::from_tensor(Tensor::<1>::from_data(TensorData::new(values, [n]), &ad));
            scalar(objective(&m, x.clone(), output))
        };
        agree(&format!("{name}: parameter {k} {shape:?}"), analytic, moved);
    }
}

#[test]
fn resnet_gradients_match_finite_differences() {
    check("r18.onnx", 0);
}

#[test]
fn small_cnn_gradients_match_finite_differences() {
    check("zoo.onnx", 0);
}

#[test]
fn onet_shaped_gradients_match_finite_differences() {
    check("heads.onnx", 1);
}
