//! Matrix products: Gemm, onnx-ir's fused Linear and MatMul.

use super::input;
use crate::value::{self, Value, broadcast, map_tensor};
use crate::{Error, Result};

pub(super) fn gemm(n: &onnx_ir::node::gemm::GemmNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    let c = &n.config;
    let a = input(&mut inputs, 0, "data")?.f2("Gemm A")?;
    let b = input(&mut inputs, 1, "Gemm B")?.f2("Gemm B")?;
    let a = if c.trans_a != 0 { a.transpose() } else { a };
    let b = if c.trans_b != 0 { b.transpose() } else { b };
    check_matmul(&a.dims(), &b.dims())?;
    let y = Value::F2(a.matmul(b) * c.alpha);
    Ok(match inputs.get_mut(2).and_then(Option::take) {
        Some(bias) => broadcast(y, map_tensor!(bias, t => t * c.beta), value::add)?,
        None => y,
    })
}

pub(super) fn linear(n: &onnx_ir::node::linear::LinearNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    let data = input(&mut inputs, 0, "data")?.f2("Linear input")?;
    let weight = input(&mut inputs, 1, "Linear weight")?.f2("Linear weight")?;
    let weight = if n.config.transpose_weight { weight.transpose() } else { weight };
    check_matmul(&data.dims(), &weight.dims())?;
    let y = Value::F2(data.matmul(weight));
    Ok(match inputs.get_mut(2).and_then(Option::take) {
        Some(bias) => broadcast(y, bias, value::add)?,
        None => y,
    })
}

pub(super) fn matmul(_node: &onnx_ir::node::matmul::MatMulNode, mut inputs: Vec<Option<Value>>) -> Result<Value> {
    let a = input(&mut inputs, 0, "data")?;
    let b = input(&mut inputs, 1, "second operand")?;
    let rank = a.rank().max(b.rank()).max(2);
    let (a, b) = (a.lift(rank)?, b.lift(rank)?);
    let (da, db) = (a.dims(), b.dims());
    check_matmul(&da[rank - 2..], &db[rank - 2..])?;
    Ok(match (a, b) {
        (Value::F2(a), Value::F2(b)) => Value::F2(a.matmul(b)),
        (Value::F3(a), Value::F3(b)) => Value::F3(a.matmul(b)),
        (Value::F4(a), Value::F4(b)) => Value::F4(a.matmul(b)),
        _ => return Err(Error::Unsupported("MatMul of these ranks".into())),
    })
}

fn check_matmul(a: &[usize], b: &[usize]) -> Result<()> {
    if a[a.len() - 1] != b[b.len() - 2] {
        return Err(Error::Shape(format!("cannot multiply {a:?} by {b:?}")));
    }
    Ok(())
}

