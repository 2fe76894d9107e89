//! Operators that move values without computing on them (shapes, indexing, layout) and the mean
//! over axes.

use super::{axis, input};
use burn::tensor::Tensor;

use crate::value::{self, Value, map_tensor};
use crate::{Error, Result};

pub(super) fn shape(n: &onnx_ir::node::shape::ShapeNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    let dims = input(&mut inputs, 0, "data")?.dims();
    let (start, end) = (n.config.start.min(dims.len()), n.config.end.min(dims.len()));
    Ok(Value::Ints(dims[start..end.max(start)].iter().map(|&d| d as i64).collect()))
}

pub(super) fn gather(_node: &onnx_ir::node::gather::GatherNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    let data = input(&mut inputs, 0, "data")?.ints("Gather's data")?;
    let indices = input(&mut inputs, 1, "indices")?.ints("Gather's indices")?;
    let n = data.len() as i64;
    let picked = indices
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + n } else { i };
            usize::try_from(j).ok().and_then(|j| data.get(j).copied()).ok_or_else(|| Error::Shape(format!("Gather index {i} out of range for {n} values")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Value::Ints(picked))
}

pub(super) fn unsqueeze(n: &onnx_ir::node::unsqueeze::UnsqueezeNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    use onnx_ir::node::unsqueeze::UnsqueezeConfig;
    let data = input(&mut inputs, 0, "data")?;
    let axes = match &n.config {
        UnsqueezeConfig::Static(a) => a.clone(),
        UnsqueezeConfig::Runtime(_) => input(&mut inputs, 1, "axes")?.ints("Unsqueeze's axes")?,
    };
    Ok(match data {
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
    })
}

pub(super) fn flatten(n: &onnx_ir::node::flatten::FlattenNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    let data = input(&mut inputs, 0, "data")?;
    let dims = data.dims();
    let ax = n.config.axis.min(dims.len());
    let outer: usize = dims[..ax].iter().product();
    let inner: usize = dims[ax..].iter().product();
    data.reshape(&[outer, inner])
}

pub(super) fn reshape(n: &onnx_ir::node::reshape::ReshapeNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    use onnx_ir::node::reshape::ReshapeInput;
    let data = input(&mut inputs, 0, "data")?;
    let shape = match &n.config.shape {
        ReshapeInput::Static(s) => s.clone(),
        ReshapeInput::Runtime(_) => input(&mut inputs, 1, "shape")?.ints("the target shape")?,
    };
    let out = value::reshape_target(&data.dims(), &shape)?;
    data.reshape(&out)
}

pub(super) fn transpose(n: &onnx_ir::node::transpose::TransposeNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    let data = input(&mut inputs, 0, "data")?;
    let rank = data.rank();
    let perm = n.config.perm.iter().map(|&a| axis(a, rank)).collect::<Result<Vec<_>>>()?;
    if perm.len() != rank {
        return Err(Error::Shape(format!("permutation {perm:?} for rank {rank}")));
    }
    Ok(match data {
        Value::F1(t) => Value::F1(t),
        Value::F2(t) => Value::F2(t.permute([perm[0], perm[1]])),
        Value::F3(t) => Value::F3(t.permute([perm[0], perm[1], perm[2]])),
        Value::F4(t) => Value::F4(t.permute([perm[0], perm[1], perm[2], perm[3]])),
        Value::Ints(_) => return Err(Error::Unsupported("Transpose of an integer list".into())),
    })
}

pub(super) fn concat(n: &onnx_ir::node::concat::ConcatNode, inputs: Vec<Option<Value>>) -> Result<Value> {
    let values: Vec<Value> = inputs.into_iter().flatten().collect();
    let ax = n.config.axis;
    Ok(match values.first() {
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
    })
}

pub(super) fn reduce_mean(n: &onnx_ir::node::reduce::ReduceMeanNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    use onnx_ir::node::reduce::ReduceAxes;
    let data = input(&mut inputs, 0, "data")?;
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
    Ok(if n.config.keepdims {
        v
    } else {
        let dims: Vec<usize> = v.dims().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| *d).collect();
        v.reshape(&dims)?
    })
}
