//! Values flowing through a graph: float tensors of rank 1 to 4 (burn tensors carry their rank in
//! their type, ONNX values do not) and integer lists (shapes, axes).

use burn::tensor::{Device, Tensor, TensorData};

use crate::{Error, Result};

#[derive(Debug, Clone)]
pub enum Value {
    F1(Tensor<1>),
    F2(Tensor<2>),
    F3(Tensor<3>),
    F4(Tensor<4>),
    Ints(Vec<i64>),
}

/// Runs `$body` with `$t` bound to the tensor of whichever rank `$v` holds; the body's type must
/// not depend on the rank.
macro_rules! with_tensor {
    ($v:expr, $t:ident => $body:expr) => {
        match $v {
            $crate::value::Value::F1($t) => $body,
            $crate::value::Value::F2($t) => $body,
            $crate::value::Value::F3($t) => $body,
            $crate::value::Value::F4($t) => $body,
            $crate::value::Value::Ints(_) => return Err($crate::Error::Unsupported("an integer list where a float tensor is needed".into())),
        }
    };
}

/// Maps the tensor of whichever rank `$v` holds to a tensor of the same rank.
macro_rules! map_tensor {
    ($v:expr, $t:ident => $body:expr) => {
        match $v {
            $crate::value::Value::F1($t) => $crate::value::Value::F1($body),
            $crate::value::Value::F2($t) => $crate::value::Value::F2($body),
            $crate::value::Value::F3($t) => $crate::value::Value::F3($body),
            $crate::value::Value::F4($t) => $crate::value::Value::F4($body),
            $crate::value::Value::Ints(_) => return Err($crate::Error::Unsupported("an integer list where a float tensor is needed".into())),
        }
    };
}

pub(crate) use map_tensor;

/// Largest number of elements a tensor built from a file may have (2³¹: 8 GiB of f32), so that a
/// crafted header cannot make drmguard allocate without bound.
pub const MAX_ELEMENTS: usize = 1 << 31;

impl Value {
    pub fn rank(&self) -> usize {
        match self {
            Value::F1(_) => 1,
            Value::F2(_) => 2,
            Value::F3(_) => 3,
            Value::F4(_) => 4,
            Value::Ints(_) => 1,
        }
    }

    pub fn dims(&self) -> Vec<usize> {
        match self {
            Value::F1(t) => t.dims().to_vec(),
            Value::F2(t) => t.dims().to_vec(),
            Value::F3(t) => t.dims().to_vec(),
            Value::F4(t) => t.dims().to_vec(),
            Value::Ints(v) => vec![v.len()],
        }
    }

    /// A float tensor of `data`'s shape (rank 0 becomes rank 1 with one element).
    pub fn from_data(data: TensorData, device: &Device) -> Result<Value> {
        let shape: Vec<usize> = data.shape().to_vec();
        let n: usize = shape.iter().product();
        if n > MAX_ELEMENTS {
            return Err(Error::Invalid(format!("a constant of shape {shape:?} is too large")));
        }
        let values: Vec<f32> = data.convert::<f32>().try_into_vec::<f32>().map_err(|e| Error::Invalid(format!("constant data: {e:?}")))?;
        let flat = Tensor::<1>::from_data(TensorData::new(values, [n]), device);
        Value::F1(flat).reshape(&shape)
    }

    /// The same elements in a tensor of `dims` (rank 1 to 4; rank 0 becomes `[1]`).
    pub fn reshape(self, dims: &[usize]) -> Result<Value> {
        if dims.contains(&0) {
            return Err(Error::Unsupported(format!("empty tensors (shape {dims:?})")));
        }
        let have: usize = self.dims().iter().product();
        let want: usize = dims.iter().product();
        if have != want {
            return Err(Error::Shape(format!("cannot reshape {:?} ({have} elements) to {dims:?}", self.dims())));
        }
        Ok(match dims.len() {
            0 => Value::F1(with_tensor!(self, t => t.reshape([1]))),
            1 => Value::F1(with_tensor!(self, t => t.reshape([dims[0]]))),
            2 => Value::F2(with_tensor!(self, t => t.reshape([dims[0], dims[1]]))),
            3 => Value::F3(with_tensor!(self, t => t.reshape([dims[0], dims[1], dims[2]]))),
            4 => Value::F4(with_tensor!(self, t => t.reshape([dims[0], dims[1], dims[2], dims[3]]))),
            r => return Err(Error::Unsupported(format!("tensors of rank {r} (drmguard-onnx runs ranks 1 to 4)"))),
        })
    }

    /// The tensor with leading axes of size 1 added up to `rank` (NumPy broadcasting).
    pub fn lift(self, rank: usize) -> Result<Value> {
        let dims = self.dims();
        if dims.len() >= rank {
            return Ok(self);
        }
        let mut lifted = vec![1; rank - dims.len()];
        lifted.extend(dims);
        self.reshape(&lifted)
    }

    pub fn f4(self, what: &str) -> Result<Tensor<4>> {
        match self {
            Value::F4(t) => Ok(t),
            other => Err(Error::Shape(format!("{what} must be a rank-4 tensor, got shape {:?}", other.dims()))),
        }
    }

    pub fn f2(self, what: &str) -> Result<Tensor<2>> {
        match self {
            Value::F2(t) => Ok(t),
            other => Err(Error::Shape(format!("{what} must be a rank-2 tensor, got shape {:?}", other.dims()))),
        }
    }

    pub fn f1(self, what: &str) -> Result<Tensor<1>> {
        let n: usize = self.dims().iter().product();
        match self.reshape(&[n]) {
            Ok(Value::F1(t)) => Ok(t),
            _ => Err(Error::Shape(format!("{what} must be a vector"))),
        }
    }

    pub fn ints(self, what: &str) -> Result<Vec<i64>> {
        match self {
            Value::Ints(v) => Ok(v),
            _ => Err(Error::Unsupported(format!("{what} computed at run time (only constant {what} are supported)"))),
        }
    }
}

/// The dimensions ONNX's Reshape gives `dims` for `target`: 0 copies the input's dimension, one
/// -1 takes what is left.
pub fn reshape_target(dims: &[usize], target: &[i64]) -> Result<Vec<usize>> {
    let total: usize = dims.iter().product();
    let bad = || Error::Shape(format!("cannot reshape {dims:?} to {target:?}"));
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 => out.push(*dims.get(i).ok_or_else(bad)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            t if t > 0 => out.push(t as usize),
            _ => return Err(bad()),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || total % known != 0 {
            return Err(bad());
        }
        out[i] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(bad());
    }
    Ok(out)
}

/// Applies a broadcasting binary operation to two values of possibly different ranks.
pub fn broadcast(a: Value, b: Value, op: fn(Value, Value) -> Result<Value>) -> Result<Value> {
    let rank = a.rank().max(b.rank());
    let (a, b) = (a.lift(rank)?, b.lift(rank)?);
    let (da, db) = (a.dims(), b.dims());
    for (x, y) in da.iter().zip(&db) {
        if x != y && *x != 1 && *y != 1 {
            return Err(Error::Shape(format!("shapes {da:?} and {db:?} do not broadcast")));
        }
    }
    op(a, b)
}

/// Same-rank elementwise arithmetic (burn broadcasts axes of size 1).
macro_rules! binary_fn {
    ($name:ident, $op:tt) => {
        pub fn $name(a: Value, b: Value) -> Result<Value> {
            Ok(match (a, b) {
                (Value::F1(a), Value::F1(b)) => Value::F1(a $op b),
                (Value::F2(a), Value::F2(b)) => Value::F2(a $op b),
                (Value::F3(a), Value::F3(b)) => Value::F3(a $op b),
                (Value::F4(a), Value::F4(b)) => Value::F4(a $op b),
                _ => return Err(Error::Unsupported("arithmetic on integer lists".into())),
            })
        }
    };
}

binary_fn!(add, +);
binary_fn!(sub, -);
binary_fn!(mul, *);
binary_fn!(div, /);
