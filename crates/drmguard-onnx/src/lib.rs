//! Runs an ONNX model on burn tensors, at run time, with autodiff: gradients flow to the input
//! image and to every float initializer, which become the module's parameters (so a model can be
//! scanned and fine-tuned). The file is parsed with `onnx-ir`, which also folds constants and
//! shape arithmetic; what remains is interpreted node by node.
//!
//! Supported: the operators `torch.onnx.export` emits for CNN regressors — Conv, BatchNormalization
//! (inference form), Relu, LeakyRelu, PRelu, Sigmoid, Tanh, MaxPool and AveragePool (pads,
//! ceil_mode), GlobalAveragePool, Gemm, MatMul (and onnx-ir's fused Linear), Add, Mul, Sub, Div,
//! Flatten, Reshape, Concat, Transpose, Pad, Clip, Softmax, ReduceMean, Constant, Identity,
//! Resize, Unsqueeze — on float tensors of rank 1 to 4, and Shape, Gather, Unsqueeze and Concat
//! on shapes computed at run time (`x.view(x.size(0), -1)`). [`OnnxModel::load`] takes graphs with one image input,
//! [`OnnxModel::load_any`] any inputs (ONNX's conformance tests). Integer chains on constants (how
//! exporters compute shapes and pads) are evaluated at load time (`fold`). Anything else is
//! refused with the operator's name when the model is loaded.

mod fold;
mod head;
mod ops;
mod program;
mod value;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

pub use head::LinearHead;
use program::{Program, Src};
pub use value::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ONNX model {path}: {message}")]
    Parse { path: String, message: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error("shape error: {0}")]
    Shape(String),
    #[error("node {node} ({op}): {message}")]
    Node { node: String, op: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An ONNX model as a burn module.
#[derive(Module, Debug)]
pub struct OnnxModel {
    /// Float initializers, flattened (reshaped at use), in file order.
    pub params: Vec<Param<Tensor<1>>>,
    #[module(skip)]
    program: Arc<Program>,
}

/// The operators this crate runs, by ONNX name.
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv", "BatchNormalization", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Gemm", "MatMul", "Add", "Mul", "Sub", "Div", "Flatten", "Reshape", "Concat", "Transpose",
    "Pad", "Clip", "Softmax", "ReduceMean", "Constant", "Identity", "Resize", "Shape", "Gather", "Unsqueeze",
];

impl OnnxModel {
    /// Parses and checks an ONNX file; every operator is checked here, so that running the model
    /// fails only on shapes.
    /// The graph must take one image batch `[n, c, h, w]`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let model = Self::load_any(path, device)?;
        let in_file = |message: String| Error::Parse { path: path.display().to_string(), message };
        match model.program.inputs.as_slice() {
            [(_, shape)] if shape.len() == 4 => Ok(model),
            [(name, shape)] => Err(in_file(format!("input {name} has rank {} (expected an image batch [n, c, h, w])", shape.len()))),
            many => Err(in_file(format!("{} graph inputs (drmguard models take one image batch)", many.len()))),
        }
    }

    /// A graph with any number of inputs of rank 1 to 4 (see [`Self::run_inputs`]).
    pub fn load_any(path: &Path, device: &Device) -> Result<Self> {
        let (params, program) = program::compile(path, device).map_err(|e| match e {
            e @ Error::Parse { .. } => e,
            other => Error::Parse { path: path.display().to_string(), message: other.to_string() },
        })?;
        Ok(OnnxModel { params, program: Arc::new(program) })
    }

    /// The graph's outputs for an image batch.
    pub fn forward(&self, x: Tensor<4>) -> Result<Vec<Value>> {
        self.run_inputs(vec![Value::F4(x)])
    }

    /// The graph's outputs for its inputs, in the graph's order.
    pub fn run_inputs(&self, xs: Vec<Value>) -> Result<Vec<Value>> {
        let p = &self.program;
        if xs.len() != p.inputs.len() {
            return Err(Error::Invalid(format!("{} inputs given, the graph takes {}", xs.len(), p.inputs.len())));
        }
        let mut slots: Vec<Option<Value>> = vec![None; p.slots];
        self.execute(&xs, &mut slots, 0, None)?;
        p.outputs
            .iter()
            .map(|(_, s)| self.fetch(s, &xs, &slots)?.ok_or_else(|| Error::Invalid("an output is absent".into())))
            .collect()
    }

    /// The value named `name` (an inner node's output) for an image batch; the graph runs only
    /// as far as needed.
    pub fn value_at(&self, x: Tensor<4>, name: &str) -> Result<Value> {
        let slot = self.slot(name)?;
        let mut slots: Vec<Option<Value>> = vec![None; self.program.slots];
        self.execute(&[Value::F4(x)], &mut slots, 0, Some(slot))?;
        slots[slot].take().ok_or_else(|| Error::Invalid(format!("{name} was not computed")))
    }

    /// Runs the graph from the value of `from` (a cut: see [`Self::is_cut`]) to the value `to`.
    pub fn resume(&self, from: &str, value: Value, to: &str) -> Result<Value> {
        if !self.is_cut(from) {
            return Err(Error::Invalid(format!("{from} does not separate the graph: later nodes read earlier values")));
        }
        let (start, stop) = (self.slot(from)?, self.slot(to)?);
        let mut slots: Vec<Option<Value>> = vec![None; self.program.slots];
        slots[start] = Some(value);
        self.execute(&[], &mut slots, self.program.producer[start] + 1, Some(stop))?;
        slots[stop].take().ok_or_else(|| Error::Invalid(format!("{to} does not follow {from}")))
    }

    /// Whether every node after the one that computes `name` depends on the input only through
    /// `name`, so that [`Self::resume`] can start there.
    pub fn is_cut(&self, name: &str) -> bool {
        let p = &self.program;
        let Ok(slot) = self.slot(name) else { return false };
        let step = p.producer[slot];
        p.steps[step + 1..].iter().all(|s| {
            s.inputs.iter().all(|src| match src {
                Src::Input(_) => false,
                Src::Slot(k) => *k == slot || p.producer[*k] > step,
                _ => true,
            })
        })
    }

    /// The ONNX operator that computes the value `name`.
    pub fn producer_op(&self, name: &str) -> Option<&'static str> {
        let slot = self.slot(name).ok()?;
        Some(ops::op_name(&self.program.steps[self.program.producer[slot]].node))
    }

    /// Every computed value's name and shape for an image batch, in execution order.
    pub fn shapes(&self, x: Tensor<4>) -> Result<Vec<(String, Vec<usize>)>> {
        let p = &self.program;
        let mut slots: Vec<Option<Value>> = vec![None; p.slots];
        self.execute(&[Value::F4(x)], &mut slots, 0, None)?;
        let mut named: Vec<(&String, &usize)> = p.slot_of.iter().collect();
        named.sort_by_key(|(_, s)| **s);
        Ok(named.into_iter().filter_map(|(n, s)| slots[*s].as_ref().map(|v| (n.clone(), v.dims()))).collect())
    }

    fn slot(&self, name: &str) -> Result<usize> {
        self.program.slot_of.get(name).copied().ok_or_else(|| Error::Invalid(format!("no value named {name}")))
    }

    fn fetch(&self, src: &Src, xs: &[Value], slots: &[Option<Value>]) -> Result<Option<Value>> {
        let p = &self.program;
        Ok(match src {
            Src::Input(i) => Some(xs.get(*i).ok_or_else(|| Error::Invalid("a graph input is read after the cut".into()))?.clone()),
            Src::Param(k) => Some(Value::F1(self.params[*k].val()).reshape(&p.param_shapes[*k])?),
            Src::Ints(v) => Some(Value::Ints(v.clone())),
            Src::Slot(s) => Some(slots[*s].clone().ok_or_else(|| Error::Invalid("a value is read before it is computed".into()))?),
            Src::Absent => None,
        })
    }

    /// Runs steps from `from` on, stopping once slot `stop` is filled.
    fn execute(&self, xs: &[Value], slots: &mut [Option<Value>], from: usize, stop: Option<usize>) -> Result<()> {
        for step in &self.program.steps[from..] {
            if stop.is_some_and(|s| slots[s].is_some()) {
                break;
            }
            let inputs = step.inputs.iter().map(|s| self.fetch(s, xs, slots)).collect::<Result<Vec<_>>>()?;
            let outputs = ops::run(&step.node, inputs).map_err(|e| Error::Node {
                node: step.node.name().to_string(),
                op: ops::op_name(&step.node).to_string(),
                message: e.to_string(),
            })?;
            for (slot, value) in step.outputs.iter().zip(outputs) {
                slots[*slot] = Some(value);
            }
        }
        Ok(())
    }

    /// The (first) input's name and shape as declared (`None` for a dynamic axis).
    pub fn input(&self) -> Option<(&str, &[Option<usize>])> {
        self.program.inputs.first().map(|(name, shape)| (name.as_str(), shape.as_slice()))
    }

    /// The outputs' names.
    pub fn output_names(&self) -> Vec<&str> {
        self.program.outputs.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// How many nodes of each operator the graph runs.
    pub fn op_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for step in &self.program.steps {
            *counts.entry(ops::op_name(&step.node)).or_insert(0) += 1;
        }
        counts
    }

    /// The initializers' names and shapes, in file order.
    pub fn parameters(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.program.param_names.iter().map(String::as_str).zip(self.program.param_shapes.iter().map(Vec::as_slice))
    }
}

/// Builds a float tensor of rank 1 to 4 from raw values (for tests and callers without burn's
/// `TensorData` at hand).
pub fn tensor(values: Vec<f32>, shape: &[usize], device: &Device) -> Result<Value> {
    Value::from_data(TensorData::new(values, shape.to_vec()), device)
}
