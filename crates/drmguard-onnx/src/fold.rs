//! Integer arithmetic on constants, done when a model is loaded: exporters compute shapes and pads
//! with small chains of operators on constants (`torch.onnx.export` lowers `F.pad` to
//! ConstantOfShape, Concat, Reshape, Slice, Transpose and Cast) that onnx-ir leaves in the graph.

use onnx_ir::Node;

use crate::{Error, Result};

/// An integer tensor: its shape and its values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct IntTensor {
    pub shape: Vec<usize>,
    pub data: Vec<i64>,
}

/// Largest constant this folds (shape arithmetic is tiny; a larger one is a malformed file).
const MAX_FOLDED: usize = 1 << 20;

impl IntTensor {
    pub fn vector(data: Vec<i64>) -> Self {
        IntTensor { shape: vec![data.len()], data }
    }

    fn strides(shape: &[usize]) -> Vec<usize> {
        let mut strides = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        strides
    }

    /// The tensor of `shape` whose element at index `i` is this tensor's element at `source(i)`.
    fn gather(&self, shape: Vec<usize>, source: impl Fn(&[usize]) -> Vec<usize>) -> Result<IntTensor> {
        let n: usize = shape.iter().product();
        if n > MAX_FOLDED {
            return Err(Error::Invalid(format!("a constant of shape {shape:?} is too large")));
        }
        let (out_strides, in_strides) = (Self::strides(&shape), Self::strides(&self.shape));
        let data = (0..n)
            .map(|flat| {
                let index: Vec<usize> = out_strides.iter().zip(&shape).map(|(s, d)| (flat / s) % d).collect();
                let src = source(&index);
                self.data[src.iter().zip(&in_strides).map(|(i, s)| i * s).sum::<usize>()]
            })
            .collect();
        Ok(IntTensor { shape, data })
    }
}

/// Folds `node` when it is one of the operators above and all its inputs are integer constants;
/// `None` when it is not foldable (it then runs, or is refused, like any other node).
pub fn fold(node: &Node, inputs: &[Option<IntTensor>]) -> Option<Result<IntTensor>> {
    let input = |i: usize| inputs.get(i).cloned().flatten();
    let all_present = node.inputs().iter().enumerate().all(|(i, a)| a.is_optional() || input(i).is_some());
    match node {
        Node::ConstantOfShape(n) => {
            use onnx_ir::node::constant_of_shape::ConstantOfShapeShape;
            let value = match &n.config.value {
                None => 0,
                Some(v) if !v.dtype().is_float() => v.clone().convert::<i64>().try_into_vec::<i64>().ok()?.first().copied().unwrap_or(0),
                Some(_) => return None,
            };
            let shape: Vec<i64> = match &n.config.shape {
                ConstantOfShapeShape::Static(s) => s.clone(),
                ConstantOfShapeShape::Runtime(_) => input(0)?.data,
            };
            Some(shape_of(&shape).and_then(|shape| {
                let len: usize = shape.iter().product();
                if len > MAX_FOLDED {
                    return Err(Error::Invalid(format!("ConstantOfShape {shape:?} is too large")));
                }
                Ok(IntTensor { shape, data: vec![value; len] })
            }))
        }
        Node::Identity(_) if all_present => Some(Ok(input(0)?)),
        Node::Cast(n) if all_present && !n.config.to.is_float() => Some(Ok(input(0)?)),
        Node::Concat(n) if all_present => {
            let parts: Vec<IntTensor> = inputs.iter().flatten().cloned().collect();
            if parts.iter().any(|p| p.shape.len() != 1) || n.config.axis != 0 {
                return None;
            }
            Some(Ok(IntTensor::vector(parts.into_iter().flat_map(|p| p.data).collect())))
        }
        Node::Reshape(n) if all_present => {
            use onnx_ir::node::reshape::ReshapeInput;
            let data = input(0)?;
            let target = match &n.config.shape {
                ReshapeInput::Static(s) => s.clone(),
                ReshapeInput::Runtime(_) => input(1)?.data,
            };
            Some(reshape(data, &target))
        }
        Node::Transpose(n) if all_present => {
            let data = input(0)?;
            let perm: Vec<usize> = n.config.perm.iter().map(|&p| p as usize).collect();
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..data.shape.len()).collect::<Vec<_>>() {
                return Some(Err(Error::Shape(format!("permutation {perm:?} of a rank-{} constant", data.shape.len()))));
            }
            let shape = perm.iter().map(|&p| data.shape[p]).collect();
            Some(data.gather(shape, |index| {
                let mut src = vec![0; index.len()];
                for (out_axis, &p) in perm.iter().enumerate() {
                    src[p] = index[out_axis];
                }
                src
            }))
        }
        Node::Slice(n) if all_present => {
            use onnx_ir::node::slice::SliceInput;
            let data = input(0)?;
            let get = |s: &SliceInput, i: usize| -> Option<Vec<i64>> {
                match s {
                    SliceInput::Static(v) => Some(v.clone()),
                    SliceInput::Runtime(_) => input(i).map(|t| t.data),
                }
            };
            let starts = get(&n.config.starts, 1)?;
            let ends = get(&n.config.ends, 2)?;
            let axes = match &n.config.axes {
                Some(a) => get(a, 3)?,
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match &n.config.steps {
                Some(s) => get(s, 4)?,
                None => vec![1; starts.len()],
            };
            Some(slice(data, &starts, &ends, &axes, &steps))
        }
        _ => None,
    }
}

fn shape_of(dims: &[i64]) -> Result<Vec<usize>> {
    dims.iter()
        .map(|&d| usize::try_from(d).map_err(|_| Error::Shape(format!("negative dimension in {dims:?}"))))
        .collect()
}

fn reshape(data: IntTensor, target: &[i64]) -> Result<IntTensor> {
    Ok(IntTensor { shape: crate::value::reshape_target(&data.shape, target)?, data: data.data })
}

/// ONNX Slice: per listed axis, `start..end` by `step` (negative steps run backwards), with
/// ONNX's clamping of out-of-range bounds.
fn slice(data: IntTensor, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> Result<IntTensor> {
    let rank = data.shape.len() as i64;
    let mut ranges: Vec<(i64, i64)> = vec![(0, 1); data.shape.len()];
    let mut shape = data.shape.clone();
    for (k, &axis) in axes.iter().enumerate() {
        let axis = if axis < 0 { axis + rank } else { axis };
        let (Some(&start), Some(&end), Some(&step)) = (starts.get(k), ends.get(k), steps.get(k)) else {
            return Err(Error::Shape("Slice with fewer starts, ends or steps than axes".into()));
        };
        if !(0..rank).contains(&axis) || step == 0 {
            return Err(Error::Shape(format!("Slice on axis {axis} of rank {rank} with step {step}")));
        }
        let dim = data.shape[axis as usize] as i64;
        let norm = |v: i64| if v < 0 { v + dim } else { v };
        let (first, count) = if step > 0 {
            let (s, e) = (norm(start).clamp(0, dim), norm(end).clamp(0, dim));
            (s, if e > s { (e - s + step - 1) / step } else { 0 })
        } else {
            let (s, e) = (norm(start).clamp(-1, dim - 1), norm(end).clamp(-1, dim - 1));
            (s, if s > e { (s - e + (-step) - 1) / (-step) } else { 0 })
        };
        ranges[axis as usize] = (first, step);
        shape[axis as usize] = count as usize;
    }
    data.gather(shape, |index| index.iter().zip(&ranges).map(|(&i, &(first, step))| (first + i as i64 * step) as usize).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slicing_backwards_and_transposing_give_torch_pad_order() {
        // torch's F.pad(x, (1, 0, 0, 1)) on a 4-D tensor: [[0, 0], [0, 0], [0, 1], [1, 0]] read
        // backwards by row, transposed and flattened gives ONNX's pads [0, 0, 0, 1, 0, 0, 1, 0].
        let pairs = IntTensor { shape: vec![4, 2], data: vec![1, 0, 0, 1, 0, 0, 0, 0] };
        let reversed = slice(pairs, &[-1], &[i64::MIN + 1], &[0], &[-1]).unwrap();
        assert_eq!(reversed.data, vec![0, 0, 0, 0, 0, 1, 1, 0]);
        let t = IntTensor { shape: vec![4, 2], data: reversed.data };
        let transposed = t.gather(vec![2, 4], |i| vec![i[1], i[0]]).unwrap();
        assert_eq!(transposed.data, vec![0, 0, 0, 1, 0, 0, 1, 0]);
        assert_eq!(reshape(transposed, &[-1]).unwrap().shape, vec![8]);
    }

    #[test]
    fn forward_slices_clamp_their_bounds() {
        let v = IntTensor::vector((0..10).collect());
        assert_eq!(slice(v.clone(), &[2], &[100], &[0], &[3]).unwrap().data, vec![2, 5, 8]);
        assert_eq!(slice(v, &[-3], &[i64::MAX], &[0], &[1]).unwrap().data, vec![7, 8, 9]);
    }
}
