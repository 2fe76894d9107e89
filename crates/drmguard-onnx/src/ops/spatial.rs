//! Operators over the image plane: convolution, batch norm, pooling, padding and resizing.

use burn::tensor::Tensor;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions, PadMode};
use onnx_ir::node::padding::{AutoPad, PaddingConfig2d};

use super::input;
use crate::value::{self, Value, broadcast, map_tensor};
use crate::{Error, Result};

pub(super) fn conv(n: &onnx_ir::node::conv2d::Conv2dNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    let c = &n.config;
    let data = input(&mut inputs, 0, "data")?.f4("Conv input")?;
    let weight = input(&mut inputs, 1, "weight")?.f4("Conv weight")?;
    let bias = inputs.get_mut(2).and_then(Option::take).map(|b| b.f1("Conv bias")).transpose()?;
    let [_, cin, _, _] = data.dims();
    let [_, wc, kh, kw] = weight.dims();
    if cin != wc * c.groups || [kh, kw] != c.kernel_size {
        return Err(Error::Shape(format!("input has {cin} channels, weight {:?} with {} groups", weight.dims(), c.groups)));
    }
    let pads = pads2(&c.padding, &c.auto_pad, spatial(&data), c.kernel_size, c.stride, c.dilation);
    let options = ConvOptions::new_with_padding(c.stride, pads, c.dilation, c.groups);
    Ok(Value::F4(conv2d(data, weight, bias, options)))
}

pub(super) fn batch_norm(n: &onnx_ir::node::batch_norm::BatchNormalizationNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    use onnx_ir::node::batch_norm::BatchNormConfig;
    let eps = match &n.config {
        BatchNormConfig::Static(c) => c.epsilon,
        BatchNormConfig::Runtime(c) => c.epsilon,
    } as f32;
    // onnx-ir 0.22 reads a missing epsilon as 0; ONNX's default is 1e-5 (an explicit 0,
    // which no exporter writes, gets the default too).
    let eps = if eps == 0.0 { 1e-5 } else { eps };
    let data = input(&mut inputs, 0, "data")?;
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
    broadcast(normed, bias, value::add)
}

pub(super) fn max_pool(n: &onnx_ir::node::max_pool2d::MaxPool2dNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    let c = &n.config;
    let data = input(&mut inputs, 0, "data")?.f4("MaxPool input")?;
    let options = MaxPoolOptions {
        kernel_size: c.kernel_size,
        stride: c.strides,
        padding: pads2(&c.padding, &c.auto_pad, spatial(&data), c.kernel_size, c.strides, c.dilation),
        dilation: c.dilation,
        ceil_mode: c.ceil_mode,
    };
    Ok(Value::F4(max_pool2d(data, options)))
}

pub(super) fn average_pool(n: &onnx_ir::node::avg_pool2d::AveragePool2dNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    let c = &n.config;
    let data = input(&mut inputs, 0, "data")?.f4("AveragePool input")?;
    let options = AvgPoolOptions {
        kernel_size: c.kernel_size,
        stride: c.strides,
        padding: pads2(&c.padding, &c.auto_pad, spatial(&data), c.kernel_size, c.strides, [1, 1]),
        count_include_pad: c.count_include_pad,
        ceil_mode: c.ceil_mode,
    };
    Ok(Value::F4(avg_pool2d(data, options)))
}

pub(super) fn global_average_pool(_node: &onnx_ir::node::global_avg_pool::GlobalAveragePoolNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    let data = input(&mut inputs, 0, "data")?.f4("GlobalAveragePool input")?;
    Ok(Value::F4(data.mean_dim(3).mean_dim(2)))
}

pub(super) fn pad(n: &onnx_ir::node::pad::PadNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    use onnx_ir::node::pad::{ConstantValueInput, PadInput, PadMode as OnnxPad};
    let data = input(&mut inputs, 0, "data")?;
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
    Ok(map_tensor!(data, t => t.pad(pads.clone(), mode)))
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

/// ONNX Resize of an `[n, c, h, w]` float tensor, nearest or linear, by index selection (so that
/// gradients flow to the input). Scales or sizes may be constants or run-time inputs; they must
/// leave the batch and channel axes alone.
pub(super) fn resize(n: &onnx_ir::node::resize::ResizeNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
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
