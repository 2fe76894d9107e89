//! One function per supported operator, on [`Value`]s.

use burn::tensor::Tensor;
use burn::tensor::activation::{leaky_relu, relu, sigmoid, softmax};
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions, PadMode};
use onnx_ir::Node;
use onnx_ir::node::padding::{AutoPad, PaddingConfig2d};

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

/// The (begin, end) pads of the two spatial axes: explicit, or for `auto_pad` SAME computed from
/// the input's size so that the output has ⌈size / stride⌉ positions (SAME_UPPER puts an odd
/// pixel at the end, SAME_LOWER at the beginning).
fn pads2(p: &PaddingConfig2d, auto_pad: &AutoPad, input: [usize; 2], kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2]) -> [(usize, usize); 2] {
    let same = |i: usize, upper: bool| {
        let out = input[i].div_ceil(stride[i]);
        let span = (kernel[i] - 1) * dilation[i] + 1;
        let total = ((out - 1) * stride[i] + span).saturating_sub(input[i]);
        let (small, large) = (total / 2, total - total / 2);
        if upper { (small, large) } else { (large, small) }
    };
    match auto_pad {
        AutoPad::SameUpper => [same(0, true), same(1, true)],
        AutoPad::SameLower => [same(0, false), same(1, false)],
        AutoPad::Valid => [(0, 0); 2],
        AutoPad::NotSet => match p {
            PaddingConfig2d::Valid => [(0, 0); 2],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [(*top, *bottom), (*left, *right)],
        },
    }
}

fn spatial(x: &Tensor<4>) -> [usize; 2] {
    let [_, _, h, w] = x.dims();
    [h, w]
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
        Node::Conv2d(n) => {
            let c = &n.config;
            let data = x(&mut inputs)?.f4("Conv input")?;
            let weight = input(&mut inputs, 1, "weight")?.f4("Conv weight")?;
            let bias = inputs.get_mut(2).and_then(Option::take).map(|b| b.f1("Conv bias")).transpose()?;
            let [_, cin, _, _] = data.dims();
            let [_, wc, kh, kw] = weight.dims();
            if cin != wc * c.groups || [kh, kw] != c.kernel_size {
                return Err(Error::Shape(format!("input has {cin} channels, weight {:?} with {} groups", weight.dims(), c.groups)));
            }
            let pads = pads2(&c.padding, &c.auto_pad, spatial(&data), c.kernel_size, c.stride, c.dilation);
            let options = ConvOptions::new_with_padding(c.stride, pads, c.dilation, c.groups);
            Value::F4(conv2d(data, weight, bias, options))
        }
        Node::BatchNormalization(n) => {
            use onnx_ir::node::batch_norm::BatchNormConfig;
            let eps = match &n.config {
                BatchNormConfig::Static(c) => c.epsilon,
                BatchNormConfig::Runtime(c) => c.epsilon,
            } as f32;
            // onnx-ir 0.22 reads a missing epsilon as 0; ONNX's default is 1e-5 (an explicit 0,
            // which no exporter writes, gets the default too).
            let eps = if eps == 0.0 { 1e-5 } else { eps };
            let data = x(&mut inputs)?;
            let rank = data.rank();
            let [scale, bias, mean, var] = [1, 2, 3, 4].map(|i| input(&mut inputs, i, "BatchNormalization statistics"));
            // Per-channel vectors on axis 1: [c] → [c, 1, …] to broadcast against [n, c, …].
            let per_channel = |v: Value| -> Result<Value> {
                let n = v.dims().iter().product::<usize>();
                let mut dims = vec![n];
                dims.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
                v.reshape(&dims)
            };
            let (scale, bias, mean, var) = (per_channel(scale?)?, per_channel(bias?)?, per_channel(mean?)?, per_channel(var?)?);
            let inv_std = map_tensor!(var, t => (t + eps).sqrt().recip());
            let centred = broadcast(data, mean, value::sub)?;
            let normed = broadcast(centred, broadcast(inv_std, scale, value::mul)?, value::mul)?;
            broadcast(normed, bias, value::add)?
        }
        Node::MaxPool2d(n) => {
            let c = &n.config;
            let data = x(&mut inputs)?.f4("MaxPool input")?;
            let options = MaxPoolOptions {
                kernel_size: c.kernel_size,
                stride: c.strides,
                padding: pads2(&c.padding, &c.auto_pad, spatial(&data), c.kernel_size, c.strides, c.dilation),
                dilation: c.dilation,
                ceil_mode: c.ceil_mode,
            };
            Value::F4(max_pool2d(data, options))
        }
        Node::AveragePool2d(n) => {
            let c = &n.config;
            let data = x(&mut inputs)?.f4("AveragePool input")?;
            let options = AvgPoolOptions {
                kernel_size: c.kernel_size,
                stride: c.strides,
                padding: pads2(&c.padding, &c.auto_pad, spatial(&data), c.kernel_size, c.strides, [1, 1]),
                count_include_pad: c.count_include_pad,
                ceil_mode: c.ceil_mode,
            };
            Value::F4(avg_pool2d(data, options))
        }
        Node::GlobalAveragePool(_) => {
            let data = x(&mut inputs)?.f4("GlobalAveragePool input")?;
            Value::F4(data.mean_dim(3).mean_dim(2))
        }
        Node::Gemm(n) => {
            let c = &n.config;
            let a = x(&mut inputs)?.f2("Gemm A")?;
            let b = input(&mut inputs, 1, "Gemm B")?.f2("Gemm B")?;
            let a = if c.trans_a != 0 { a.transpose() } else { a };
            let b = if c.trans_b != 0 { b.transpose() } else { b };
            check_matmul(&a.dims(), &b.dims())?;
            let y = Value::F2(a.matmul(b) * c.alpha);
            match inputs.get_mut(2).and_then(Option::take) {
                Some(bias) => broadcast(y, map_tensor!(bias, t => t * c.beta), value::add)?,
                None => y,
            }
        }
        Node::Linear(n) => {
            let data = x(&mut inputs)?.f2("Linear input")?;
            let weight = input(&mut inputs, 1, "Linear weight")?.f2("Linear weight")?;
            let weight = if n.config.transpose_weight { weight.transpose() } else { weight };
            check_matmul(&data.dims(), &weight.dims())?;
            let y = Value::F2(data.matmul(weight));
            match inputs.get_mut(2).and_then(Option::take) {
                Some(bias) => broadcast(y, bias, value::add)?,
                None => y,
            }
        }
        Node::MatMul(_) => {
            let a = x(&mut inputs)?;
            let b = input(&mut inputs, 1, "second operand")?;
            let rank = a.rank().max(b.rank()).max(2);
            let (a, b) = (a.lift(rank)?, b.lift(rank)?);
            let (da, db) = (a.dims(), b.dims());
            check_matmul(&da[rank - 2..], &db[rank - 2..])?;
            match (a, b) {
                (Value::F2(a), Value::F2(b)) => Value::F2(a.matmul(b)),
                (Value::F3(a), Value::F3(b)) => Value::F3(a.matmul(b)),
                (Value::F4(a), Value::F4(b)) => Value::F4(a.matmul(b)),
                _ => return Err(Error::Unsupported("MatMul of these ranks".into())),
            }
        }
        Node::Shape(n) => {
            let dims = x(&mut inputs)?.dims();
            let (start, end) = (n.config.start.min(dims.len()), n.config.end.min(dims.len()));
            Value::Ints(dims[start..end.max(start)].iter().map(|&d| d as i64).collect())
        }
        Node::Gather(_) => {
            let data = x(&mut inputs)?.ints("Gather's data")?;
            let indices = input(&mut inputs, 1, "indices")?.ints("Gather's indices")?;
            let n = data.len() as i64;
            let picked = indices
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + n } else { i };
                    usize::try_from(j).ok().and_then(|j| data.get(j).copied()).ok_or_else(|| Error::Shape(format!("Gather index {i} out of range for {n} values")))
                })
                .collect::<Result<Vec<_>>>()?;
            Value::Ints(picked)
        }
        Node::Unsqueeze(n) => {
            use onnx_ir::node::unsqueeze::UnsqueezeConfig;
            let data = x(&mut inputs)?;
            let axes = match &n.config {
                UnsqueezeConfig::Static(a) => a.clone(),
                UnsqueezeConfig::Runtime(_) => input(&mut inputs, 1, "axes")?.ints("Unsqueeze's axes")?,
            };
            match data {
                // Integer lists carry no rank: a gathered scalar and its unsqueezed vector are
                // the same list.
                Value::Ints(v) => Value::Ints(v),
                data => {
                    let dims = data.dims();
                    let rank = dims.len() + axes.len();
                    let mut at = axes.iter().map(|&a| axis(a, rank)).collect::<Result<Vec<_>>>()?;
                    at.sort_unstable();
                    let mut out = dims.into_iter();
                    let new: Vec<usize> = (0..rank).map(|i| if at.binary_search(&i).is_ok() { 1 } else { out.next().unwrap_or(1) }).collect();
                    data.reshape(&new)?
                }
            }
        }
        Node::Flatten(n) => {
            let data = x(&mut inputs)?;
            let dims = data.dims();
            let ax = n.config.axis.min(dims.len());
            let outer: usize = dims[..ax].iter().product();
            let inner: usize = dims[ax..].iter().product();
            data.reshape(&[outer, inner])?
        }
        Node::Reshape(n) => {
            use onnx_ir::node::reshape::ReshapeInput;
            let data = x(&mut inputs)?;
            let shape = match &n.config.shape {
                ReshapeInput::Static(s) => s.clone(),
                ReshapeInput::Runtime(_) => input(&mut inputs, 1, "shape")?.ints("the target shape")?,
            };
            let out = value::reshape_target(&data.dims(), &shape)?;
            data.reshape(&out)?
        }
        Node::Transpose(n) => {
            let data = x(&mut inputs)?;
            let rank = data.rank();
            let perm = n.config.perm.iter().map(|&a| axis(a, rank)).collect::<Result<Vec<_>>>()?;
            if perm.len() != rank {
                return Err(Error::Shape(format!("permutation {perm:?} for rank {rank}")));
            }
            match data {
                Value::F1(t) => Value::F1(t),
                Value::F2(t) => Value::F2(t.permute([perm[0], perm[1]])),
                Value::F3(t) => Value::F3(t.permute([perm[0], perm[1], perm[2]])),
                Value::F4(t) => Value::F4(t.permute([perm[0], perm[1], perm[2], perm[3]])),
                Value::Ints(_) => return Err(Error::Unsupported("Transpose of an integer list".into())),
            }
        }
        Node::Concat(n) => {
            let values: Vec<Value> = inputs.into_iter().flatten().collect();
            let ax = n.config.axis;
            match values.first() {
                Some(Value::Ints(_)) => {
                    let mut all = Vec::new();
                    for v in values {
                        all.extend(v.ints("Concat operands")?);
                    }
                    Value::Ints(all)
                }
                Some(Value::F1(_)) => Value::F1(Tensor::cat(values.into_iter().map(|v| v.f1("Concat operand")).collect::<Result<Vec<_>>>()?, ax)),
                Some(Value::F2(_)) => Value::F2(Tensor::cat(values.into_iter().map(|v| v.f2("Concat operand")).collect::<Result<Vec<_>>>()?, ax)),
                Some(Value::F4(_)) => Value::F4(Tensor::cat(values.into_iter().map(|v| v.f4("Concat operand")).collect::<Result<Vec<_>>>()?, ax)),
                Some(Value::F3(_)) => {
                    let mut ts = Vec::new();
                    for v in values {
                        match v {
                            Value::F3(t) => ts.push(t),
                            _ => return Err(Error::Shape("Concat operands of different ranks".into())),
                        }
                    }
                    Value::F3(Tensor::cat(ts, ax))
                }
                None => return Err(Error::Invalid("Concat without operands".into())),
            }
        }
        Node::Pad(n) => {
            use onnx_ir::node::pad::{ConstantValueInput, PadInput, PadMode as OnnxPad};
            let data = x(&mut inputs)?;
            if let Value::Ints(_) = data {
                return Err(Error::Unsupported("Pad of an integer tensor".into()));
            }
            let pads = match &n.config.pads {
                PadInput::Static(p) => p.clone(),
                // ONNX order: every axis's begin, then every axis's end.
                PadInput::Runtime { axes: None, .. } => {
                    let flat = input(&mut inputs, 1, "pads")?.ints("pads")?;
                    let rank = data.rank();
                    if flat.len() != 2 * rank || flat.iter().any(|p| *p < 0) {
                        return Err(Error::Unsupported(format!("pads {flat:?} for rank {rank} (negative pads crop)")));
                    }
                    (0..rank).map(|i| (flat[i] as usize, flat[i + rank] as usize)).collect()
                }
                PadInput::Runtime { .. } => return Err(Error::Unsupported("Pad with axes computed at run time".into())),
            };
            if pads.len() != data.rank() {
                return Err(Error::Shape(format!("{} pad pairs for rank {}", pads.len(), data.rank())));
            }
            let mode = match n.config.mode {
                OnnxPad::Constant => match &n.config.constant_value {
                    ConstantValueInput::Static(v) => PadMode::Constant(*v),
                    ConstantValueInput::Runtime(_) => return Err(Error::Unsupported("Pad with a value computed at run time".into())),
                },
                OnnxPad::Reflect => PadMode::Reflect,
                OnnxPad::Edge => PadMode::Edge,
            };
            map_tensor!(data, t => t.pad(pads.clone(), mode))
        }
        Node::Resize(n) => resize(n, inputs)?,
        Node::ReduceMean(n) => {
            use onnx_ir::node::reduce::ReduceAxes;
            let data = x(&mut inputs)?;
            let rank = data.rank();
            let axes: Vec<usize> = match &n.config.axes {
                ReduceAxes::Static(a) if a.is_empty() && n.config.noop_with_empty_axes => vec![],
                ReduceAxes::Static(a) if a.is_empty() => (0..rank).collect(),
                ReduceAxes::Static(a) => a.clone(),
                _ => return Err(Error::Unsupported("ReduceMean with axes computed at run time".into())),
            };
            if let Some(bad) = axes.iter().find(|a| **a >= rank) {
                return Err(Error::Shape(format!("axis {bad} for rank {rank}")));
            }
            let mut v = data;
            for &a in &axes {
                v = map_tensor!(v, t => t.mean_dim(a));
            }
            if n.config.keepdims {
                v
            } else {
                let dims: Vec<usize> = v.dims().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| *d).collect();
                v.reshape(&dims)?
            }
        }
        other => return Err(Error::Unsupported(format!("operator {:?}", other.node_type()))),
    };
    Ok(vec![out])
}

fn check_matmul(a: &[usize], b: &[usize]) -> Result<()> {
    if a[a.len() - 1] != b[b.len() - 2] {
        return Err(Error::Shape(format!("cannot multiply {a:?} by {b:?}")));
    }
    Ok(())
}

/// ONNX Resize of an `[n, c, h, w]` float tensor, nearest or linear, by index selection (so that
/// gradients flow to the input). Scales or sizes may be constants or run-time inputs; they must
/// leave the batch and channel axes alone.
fn resize(n: &onnx_ir::node::resize::ResizeNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    use onnx_ir::node::resize::{CoordinateTransformMode as Ct, NearestMode, ResizeMode, ResizeScales, ResizeSizes};
    let c = &n.config;
    let Value::F4(x) = input(&mut inputs, 0, "X")? else {
        return Err(Error::Unsupported("Resize of a tensor that is not a 4-D float tensor".into()));
    };
    let [_, _, h, w] = x.dims();
    let floats = |v: Value| -> Result<Vec<f32>> {
        match v {
            Value::Ints(i) => Ok(i.into_iter().map(|v| v as f32).collect()),
            other => other.f1("Resize scales")?.into_data().try_to_vec::<f32>().map_err(|e| Error::Invalid(format!("Resize scales: {e:?}"))),
        }
    };
    let scales: Option<Vec<f32>> = match &c.scales {
        Some(ResizeScales::Static(v)) if !v.is_empty() => Some(v.clone()),
        Some(ResizeScales::Runtime(r)) => Some(floats(input(&mut inputs, r.input_index, "scales")?)?),
        _ => None,
    };
    let sizes: Option<Vec<usize>> = match &c.sizes {
        Some(ResizeSizes::Static(v)) if !v.is_empty() => Some(v.clone()),
        Some(ResizeSizes::Runtime(r)) => {
            let v = input(&mut inputs, r.input_index, "sizes")?.ints("Resize sizes")?;
            if v.iter().any(|d| *d <= 0) {
                return Err(Error::Shape(format!("Resize sizes {v:?} must be positive")));
            }
            Some(v.into_iter().map(|d| d as usize).collect())
        }
        _ => None,
    };
    // Per spatial axis: the output length and the scale that maps coordinates. Scales and sizes
    // cover all four axes, or (as onnx-ir may hand them over) the two spatial ones.
    let (out, scale): ([usize; 2], [f32; 2]) = match (sizes, scales) {
        (Some(s), _) => {
            let spatial = match s.len() {
                2 => [s[0], s[1]],
                4 if s[..2] == x.dims()[..2] => [s[2], s[3]],
                _ => return Err(Error::Unsupported(format!("Resize sizes {s:?} of a {:?} tensor (only the last two axes may change)", x.dims()))),
            };
            (spatial, [spatial[0] as f32 / h as f32, spatial[1] as f32 / w as f32])
        }
        (None, Some(s)) => {
            let spatial = match s.len() {
                2 => [s[0], s[1]],
                4 if s[0] == 1.0 && s[1] == 1.0 => [s[2], s[3]],
                _ => return Err(Error::Unsupported(format!("Resize scales {s:?} of a {:?} tensor (only the last two axes may change)", x.dims()))),
            };
            if !spatial.iter().all(|v| v.is_finite() && *v > 0.0) {
                return Err(Error::Unsupported(format!("Resize scales {s:?} (must be positive)")));
            }
            ([(h as f32 * spatial[0]).floor() as usize, (w as f32 * spatial[1]).floor() as usize], spatial)
        }
        (None, None) => return Err(Error::Invalid("Resize without scales or sizes".into())),
    };
    if out.contains(&0) || out[0] * out[1] > (1 << 28) {
        return Err(Error::Shape(format!("Resize to {out:?}")));
    }
    // Where output position i samples the input, in input coordinates. Align-corners divides by
    // the unrounded output length (len_in · scale), as ONNX's reference implementation does.
    let source = |i: usize, len_in: usize, len_out: usize, scale: f32| -> f32 {
        let i = i as f32;
        let exact_out = len_in as f32 * scale;
        match c.coordinate_transformation_mode {
            Ct::AlignCorners if exact_out > 1.0 => i * (len_in as f32 - 1.0) / (exact_out - 1.0),
            Ct::AlignCorners => 0.0,
            Ct::Asymmetric => i / scale,
            Ct::PytorchHalfPixel if len_out == 1 => 0.0,
            _ => (i + 0.5) / scale - 0.5,
        }
    };
    let device = x.device();
    let index = |v: Vec<i64>| Tensor::<1, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(v.clone(), [v.len()]), &device);
    let mut y = x;
    for (axis, (len_in, len_out)) in [(2usize, (h, out[0])), (3, (w, out[1]))] {
        let coords: Vec<f32> = (0..len_out).map(|i| source(i, len_in, len_out, scale[axis - 2])).collect();
        let last = len_in as i64 - 1;
        y = match c.mode {
            ResizeMode::Nearest => {
                let pick = |v: f32| -> i64 {
                    let f = v.floor();
                    let half = (v - f - 0.5).abs() < 1e-6;
                    let r = match c.nearest_mode {
                        NearestMode::Floor => f,
                        NearestMode::Ceil => v.ceil(),
                        NearestMode::RoundPreferFloor if half => f,
                        NearestMode::RoundPreferCeil if half => f + 1.0,
                        _ => v.round(),
                    };
                    (r as i64).clamp(0, last)
                };
                y.select(axis, index(coords.iter().map(|&v| pick(v)).collect()))
            }
            _ => {
                let clamped: Vec<f32> = coords.iter().map(|&v| v.clamp(0.0, last as f32)).collect();
                let lo: Vec<i64> = clamped.iter().map(|v| v.floor() as i64).collect();
                let hi: Vec<i64> = lo.iter().map(|&l| (l + 1).min(last)).collect();
                let frac: Vec<f32> = clamped.iter().zip(&lo).map(|(v, &l)| v - l as f32).collect();
                let mut shape = [1usize; 4];
                shape[axis] = len_out;
                let t = Tensor::<1>::from_floats(frac.as_slice(), &device).reshape(shape);
                let (a, b) = (y.clone().select(axis, index(lo)), y.select(axis, index(hi)));
                a * (t.clone().neg() + 1.0) + b * t
            }
        };
    }
    Ok(Value::F4(y))
}
