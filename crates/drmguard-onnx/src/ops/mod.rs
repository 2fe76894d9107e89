//! One function per supported operator, on [`Value`]s.

use burn::tensor::activation::{leaky_relu, relu, sigmoid, softmax};
use onnx_ir::Node;

mod linear;
mod shape;
mod spatial;

use crate::value::{self, Value, broadcast, map_tensor};
use crate::{Error, Result};

/// The ONNX name of a node's operator.
pub fn op_name(node: &Node) -> &'static str {
    match node {
        Node::Conv2d(_) => "Conv",
        Node::BatchNormalization(_) => "BatchNormalization",
        Node::Relu(_) => "Relu",
        Node::LeakyRelu(_) => "LeakyRelu",
        Node::PRelu(_) => "PRelu",
        Node::Sigmoid(_) => "Sigmoid",
        Node::Tanh(_) => "Tanh",
        Node::MaxPool2d(_) => "MaxPool",
        Node::AveragePool2d(_) => "AveragePool",
        Node::GlobalAveragePool(_) => "GlobalAveragePool",
        Node::Gemm(_) => "Gemm",
        Node::MatMul(_) => "MatMul",
        Node::Linear(_) => "Gemm (fused Linear)",
        Node::Add(_) => "Add",
        Node::Sub(_) => "Sub",
        Node::Mul(_) => "Mul",
        Node::Div(_) => "Div",
        Node::Flatten(_) => "Flatten",
        Node::Reshape(_) => "Reshape",
        Node::Concat(_) => "Concat",
        Node::Transpose(_) => "Transpose",
        Node::Pad(_) => "Pad",
        Node::Clip(_) => "Clip",
        Node::Softmax(_) => "Softmax",
        Node::ReduceMean(_) => "ReduceMean",
        Node::Constant(_) => "Constant",
        Node::Identity(_) => "Identity",
        Node::Resize(_) => "Resize",
        Node::Shape(_) => "Shape",
        Node::Gather(_) => "Gather",
        Node::Unsqueeze(_) => "Unsqueeze",
        _ => "unsupported",
    }
}

/// Refuses, at load time, operators and settings this crate does not run.
pub fn check(node: &Node) -> Result<()> {
    let refuse = |what: String| Err(Error::Unsupported(format!("node {}: {what}", node.name())));
    match node {
        Node::Conv2d(n) => {
            let c = &n.config;
            if c.kernel_size.contains(&0) || c.stride.contains(&0) || c.dilation.contains(&0) || c.groups == 0 {
                return refuse("Conv with a zero kernel, stride, dilation or group count".into());
            }
        }
        Node::MaxPool2d(n) => {
            let c = &n.config;
            if c.kernel_size.contains(&0) || c.strides.contains(&0) || c.dilation.contains(&0) {
                return refuse("MaxPool with a zero kernel, stride or dilation".into());
            }
        }
        Node::AveragePool2d(n) => {
            let c = &n.config;
            if c.kernel_size.contains(&0) || c.strides.contains(&0) || c.dilation != [1, 1] {
                return refuse("AveragePool with a zero kernel or stride, or dilation".into());
            }
        }
        Node::Resize(n) => {
            use onnx_ir::node::resize::{CoordinateTransformMode as Ct, ResizeMode};
            let c = &n.config;
            if c.mode == ResizeMode::Cubic {
                return refuse("Resize in cubic mode (nearest and linear are supported)".into());
            }
            if c.antialias != 0 {
                return refuse("Resize with antialias".into());
            }
            if matches!(c.coordinate_transformation_mode, Ct::TfCropAndResize | Ct::TfHalfPixelForNn) {
                return refuse(format!("Resize with coordinate_transformation_mode {:?}", c.coordinate_transformation_mode));
            }
        }
        // Gather runs on shapes (`x.view(x.size(0), -1)` exports Shape → Gather → Unsqueeze →
        // Concat → Reshape), not on float tensors (embeddings).
        Node::Gather(n) => {
            use onnx_ir::ArgType;
            let on_shape = match n.inputs.first().map(|a| &a.ty) {
                Some(ArgType::Shape(_)) => true,
                Some(ArgType::Tensor(t)) => t.rank == 1 && !t.dtype.is_float(),
                Some(ArgType::ScalarTensor(d) | ArgType::ScalarNative(d)) => !d.is_float(),
                None => false,
            };
            if !on_shape || n.config.axis != 0 {
                return refuse("Gather on a float tensor (Gather runs on shapes and integer lists only)".into());
            }
        }
        Node::Custom(c) => return refuse(format!("operator {}::{}", c.domain, c.op_type)),
        other if op_name(other) == "unsupported" => {
            return refuse(format!("operator {:?} (supported: {})", other.node_type(), crate::SUPPORTED_OPS.join(", ")));
        }
        _ => {}
    }
    Ok(())
}

fn input(inputs: &mut [Option<Value>], i: usize, what: &str) -> Result<Value> {
    inputs.get_mut(i).and_then(Option::take).ok_or_else(|| Error::Invalid(format!("missing input {i} ({what})")))
}

/// Normalises a possibly negative axis of a rank-`rank` tensor.
fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    if !(0..r).contains(&a) {
        return Err(Error::Shape(format!("axis {a} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Runs one node.
pub fn run(node: &Node, mut inputs: Vec<Option<Value>>) -> Result<Vec<Value>> {
    let x = |inputs: &mut Vec<Option<Value>>| input(inputs, 0, "data");
    let out = match node {
        Node::Identity(_) => x(&mut inputs)?,
        Node::Constant(_) => return Err(Error::Invalid("Constant nodes are resolved when the model is loaded".into())),
        Node::Relu(_) => map_tensor!(x(&mut inputs)?, t => relu(t)),
        Node::Sigmoid(_) => map_tensor!(x(&mut inputs)?, t => sigmoid(t)),
        Node::Tanh(_) => map_tensor!(x(&mut inputs)?, t => t.tanh()),
        Node::LeakyRelu(n) => {
            let alpha = n.config.alpha;
            map_tensor!(x(&mut inputs)?, t => leaky_relu(t, alpha))
        }
        Node::PRelu(_) => {
            let data = x(&mut inputs)?;
            let slope = input(&mut inputs, 1, "slope")?;
            let pos = map_tensor!(data.clone(), t => relu(t));
            let neg = broadcast(data, pos.clone(), value::sub)?;
            broadcast(pos, broadcast(slope, neg, value::mul)?, value::add)?
        }
        Node::Clip(n) => {
            use onnx_ir::node::clip::ClipInput;
            let bound = |b: &Option<ClipInput>, inputs: &mut Vec<Option<Value>>, i: usize| -> Result<Option<f32>> {
                match b {
                    None => Ok(None),
                    Some(ClipInput::Static(v)) => Ok(Some(*v as f32)),
                    Some(ClipInput::Runtime(_)) => {
                        let v = input(inputs, i, "clip bound")?.f1("a clip bound")?;
                        Ok(Some(v.into_scalar::<f32>()))
                    }
                }
            };
            let lo = bound(&n.config.min, &mut inputs, 1)?.unwrap_or(f32::MIN);
            let hi = bound(&n.config.max, &mut inputs, 2)?.unwrap_or(f32::MAX);
            map_tensor!(x(&mut inputs)?, t => t.clamp(lo, hi))
        }
        Node::Softmax(n) => {
            let ax = n.config.axis;
            map_tensor!(x(&mut inputs)?, t => softmax(t, ax))
        }
        Node::Add(_) | Node::Sub(_) | Node::Mul(_) | Node::Div(_) => {
            let a = x(&mut inputs)?;
            let b = input(&mut inputs, 1, "second operand")?;
            let f = match node {
                Node::Add(_) => value::add,
                Node::Sub(_) => value::sub,
                Node::Mul(_) => value::mul,
                _ => value::div,
            };
            broadcast(a, b, f)?
        }
        Node::Conv2d(n) => spatial::conv(n, inputs)?,
        Node::BatchNormalization(n) => spatial::batch_norm(n, inputs)?,
        Node::MaxPool2d(n) => spatial::max_pool(n, inputs)?,
        Node::AveragePool2d(n) => spatial::average_pool(n, inputs)?,
        Node::GlobalAveragePool(n) => spatial::global_average_pool(n, inputs)?,
        Node::Gemm(n) => linear::gemm(n, inputs)?,
        Node::Linear(n) => linear::linear(n, inputs)?,
        Node::MatMul(n) => linear::matmul(n, inputs)?,
        Node::Shape(n) => shape::shape(n, inputs)?,
        Node::Gather(n) => shape::gather(n, inputs)?,
        Node::Unsqueeze(n) => shape::unsqueeze(n, inputs)?,
        Node::Flatten(n) => shape::flatten(n, inputs)?,
        Node::Reshape(n) => shape::reshape(n, inputs)?,
        Node::Transpose(n) => shape::transpose(n, inputs)?,
        Node::Concat(n) => shape::concat(n, inputs)?,
        Node::Pad(n) => spatial::pad(n, inputs)?,
        Node::Resize(n) => spatial::resize(n, inputs)?,
        Node::ReduceMean(n) => shape::reduce_mean(n, inputs)?,
        other => return Err(Error::Unsupported(format!("operator {:?}", other.node_type()))),
    };
    Ok(vec![out])
}

