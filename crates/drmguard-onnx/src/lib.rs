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
mod ops;
mod value;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use onnx_ir::{ArgType, Argument, Node, OnnxGraphBuilder, ValueSource};

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

/// Where a node input comes from.
#[derive(Debug, Clone)]
enum Src {
    /// A graph input, by position.
    Input(usize),
    /// A float initializer, trainable.
    Param(usize),
    /// An integer constant (shapes, axes).
    Ints(Vec<i64>),
    /// The output of an earlier node.
    Slot(usize),
    /// An optional input left out.
    Absent,
}

#[derive(Debug, Clone)]
struct Step {
    node: Node,
    inputs: Vec<Src>,
    outputs: Vec<usize>,
}

/// The interpreted graph: steps in execution order, the initializers' shapes and where the
/// outputs come from.
#[derive(Debug)]
struct Program {
    steps: Vec<Step>,
    param_shapes: Vec<Vec<usize>>,
    param_names: Vec<String>,
    /// The graph inputs' names and declared shapes (`None` for a dynamic axis).
    inputs: Vec<(String, Vec<Option<usize>>)>,
    outputs: Vec<(String, Src)>,
    slots: usize,
    /// Slot of each value by name, for reading an inner node's value.
    slot_of: HashMap<String, usize>,
    /// The step that computes each slot.
    producer: Vec<usize>,
}

/// An ONNX model as a burn module.
#[derive(Module, Debug)]
pub struct OnnxModel {
    /// Float initializers, flattened (reshaped at use), in file order.
    pub params: Vec<Param<Tensor<1>>>,
    #[module(skip)]
    program: Arc<Program>,
}

/// The names the file gives its graph outputs (`None` if it cannot be read again, which the
/// parse that succeeded before makes unlikely).
fn file_output_names(path: &Path) -> Option<Vec<String>> {
    use onnx_ir::Message;
    let bytes = std::fs::read(path).ok()?;
    let model = std::panic::catch_unwind(|| onnx_ir::ModelProto::parse_from_bytes(&bytes)).ok()?.ok()?;
    Some(model.graph.output.iter().map(|o| o.name.clone()).collect())
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
        Self::load_graph(path, device).map_err(|e| match e {
            e @ Error::Parse { .. } => e,
            other => Error::Parse { path: path.display().to_string(), message: other.to_string() },
        })
    }

    fn load_graph(path: &Path, device: &Device) -> Result<Self> {
        let parse_err = |message: String| Error::Parse { path: path.display().to_string(), message };
        if !path.is_file() {
            return Err(parse_err("no such file".into()));
        }
        // onnx-ir is third-party code: a crafted file must not crash the process.
        let graph = std::panic::catch_unwind(|| OnnxGraphBuilder::new().parse_file(path))
            .map_err(|_| parse_err("the file is malformed (the parser gave up)".into()))?
            .map_err(|e| parse_err(e.to_string()))?;
        let graph_inputs: Vec<&Argument> = graph.inputs.iter().filter(|a| !a.is_static() && !a.is_constant()).collect();
        let inputs = graph_inputs
            .iter()
            .map(|a| match &a.ty {
                ArgType::Tensor(t) if (1..=4).contains(&t.rank) => Ok((a.name.clone(), t.static_shape.clone().unwrap_or_else(|| vec![None; t.rank]))),
                other => Err(Error::Unsupported(format!("input {} of type {other:?} (tensors of rank 1 to 4 are supported)", a.name))),
            })
            .collect::<Result<Vec<_>>>()?;
        let input_index: HashMap<String, usize> = inputs.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();

        let mut params: Vec<Param<Tensor<1>>> = Vec::new();
        let mut param_shapes = Vec::new();
        let mut param_names = Vec::new();
        let mut param_of: HashMap<String, usize> = HashMap::new();
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        // Outputs of Constant nodes, which become parameters or integer constants.
        let mut constant_of: HashMap<String, Src> = HashMap::new();
        let mut steps = Vec::new();
        let mut producer = Vec::new();
        let mut resolve = |arg: &Argument, slot_of: &HashMap<String, usize>, constant_of: &HashMap<String, Src>| -> Result<Src> {
            if let Some(src) = constant_of.get(&arg.name) {
                return Ok(src.clone());
            }
            let key = match arg.value_source {
                ValueSource::Optional => return Ok(Src::Absent),
                ValueSource::Dynamic if input_index.contains_key(&arg.name) => return Ok(Src::Input(input_index[&arg.name])),
                ValueSource::Dynamic => {
                    return slot_of
                        .get(&arg.name)
                        .map(|&slot| Src::Slot(slot))
                        .ok_or_else(|| Error::Invalid(format!("value {} is used before it is computed", arg.name)));
                }
                // Static values have no name: the store's id tells them apart.
                ValueSource::Static(id) => format!("static #{id}"),
                ValueSource::Constant => arg.name.clone(),
            };
            let Some(data) = arg.value() else {
                return Err(Error::Invalid(format!("constant {key} has no value")));
            };
            if data.dtype().is_float() {
                if let Some(&k) = param_of.get(&key) {
                    return Ok(Src::Param(k));
                }
                let shape = data.shape().to_vec();
                let flat = match Value::from_data(data, device)?.reshape(&[shape.iter().product()])? {
                    Value::F1(t) => t,
                    _ => unreachable!("reshaped to rank 1"),
                };
                params.push(Param::from_tensor(flat));
                param_shapes.push(shape);
                param_names.push(key.clone());
                param_of.insert(key, params.len() - 1);
                Ok(Src::Param(params.len() - 1))
            } else {
                let ints = data.convert::<i64>().try_into_vec::<i64>().map_err(|e| Error::Invalid(format!("{}: {e:?}", arg.name)))?;
                Ok(Src::Ints(ints))
            }
        };
        // Shapes of folded integer constants (a plain Src::Ints is one-dimensional).
        let mut folded_shapes: HashMap<String, Vec<usize>> = HashMap::new();
        for node in &graph.nodes {
            let int_inputs: Vec<Option<fold::IntTensor>> = node
                .inputs()
                .iter()
                .map(|a| match constant_of.get(&a.name) {
                    Some(Src::Ints(data)) => Some(fold::IntTensor {
                        shape: folded_shapes.get(&a.name).cloned().unwrap_or_else(|| vec![data.len()]),
                        data: data.clone(),
                    }),
                    Some(_) => None,
                    None if a.is_static() || a.is_constant() => a
                        .value()
                        .filter(|d| !d.dtype().is_float())
                        .and_then(|d| Some(fold::IntTensor { shape: d.shape().to_vec(), data: d.convert::<i64>().try_into_vec::<i64>().ok()? })),
                    None => None,
                })
                .collect();
            if let Some(folded) = fold::fold(node, &int_inputs) {
                let folded = folded.map_err(|e| Error::Node { node: node.name().into(), op: format!("{:?}", node.node_type()), message: e.to_string() })?;
                let out = node.outputs().first().ok_or_else(|| Error::Invalid(format!("{} without output", node.name())))?;
                folded_shapes.insert(out.name.clone(), folded.shape);
                constant_of.insert(out.name.clone(), Src::Ints(folded.data));
                continue;
            }
            ops::check(node)?;
            if let Node::Constant(c) = node {
                let out = c.outputs.first().ok_or_else(|| Error::Invalid(format!("Constant {} without output", c.name)))?;
                let mut valued = out.clone();
                if valued.value().is_none() {
                    if let Some(v) = c.inputs.first() {
                        valued.copy_value(v);
                    }
                }
                let src = resolve(&valued, &slot_of, &constant_of)?;
                constant_of.insert(out.name.clone(), src);
                continue;
            }
            let inputs = node.inputs().iter().map(|a| resolve(a, &slot_of, &constant_of)).collect::<Result<Vec<_>>>()?;
            let outputs = node
                .outputs()
                .iter()
                .map(|a| {
                    let slot = slot_of.len();
                    slot_of.insert(a.name.clone(), slot);
                    slot
                })
                .collect();
            producer.extend(std::iter::repeat_n(steps.len(), node.outputs().len()));
            steps.push(Step { node: node.clone(), inputs, outputs });
        }
        // onnx-ir renames every value; users know the graph's outputs by the file's names.
        let file_names = file_output_names(path).filter(|names| names.len() == graph.outputs.len());
        let outputs = graph
            .outputs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let name = file_names.as_ref().map_or_else(|| a.name.clone(), |names| names[i].clone());
                Ok((name, resolve(a, &slot_of, &constant_of)?))
            })
            .collect::<Result<Vec<_>>>()?;
        if outputs.is_empty() {
            return Err(Error::Invalid("the graph has no outputs".into()));
        }
        let program = Program {
            steps,
            param_shapes,
            param_names,
            inputs,
            outputs,
            slots: slot_of.len(),
            slot_of,
            producer,
        };
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

    /// The linear layer that computes output `output` directly: drmguard's head H, with the
    /// name of its input (the penultimate features). An output computed by anything else (an
    /// activation after the last layer, several heads summed) is refused.
    pub fn linear_head(&self, output: usize) -> Result<LinearHead> {
        let p = &self.program;
        let (name, src) = p.outputs.get(output).ok_or_else(|| Error::Invalid(format!("no output {output}")))?;
        let not_linear = |what: &str| Error::Unsupported(format!("output {name} is computed by {what}, not by a linear layer of the penultimate features"));
        let Src::Slot(slot) = src else { return Err(not_linear("no node")) };
        let step = &p.steps[p.producer[*slot]];
        let param = |i: usize| -> Result<Option<Tensor<1>>> {
            match step.inputs.get(i) {
                Some(Src::Param(k)) => Ok(Some(self.params[*k].val())),
                None | Some(Src::Absent) => Ok(None),
                Some(_) => Err(not_linear("a layer whose weights are computed")),
            }
        };
        let features = step.node.inputs().first().map(|a| a.name.clone()).ok_or_else(|| not_linear("a node without input"))?;
        if !matches!(step.inputs.first(), Some(Src::Slot(_))) {
            return Err(not_linear("a layer of the input image"));
        }
        let shape = |i: usize| match step.inputs.get(i) {
            Some(Src::Param(k)) => p.param_shapes[*k].clone(),
            _ => vec![],
        };
        let (weight, bias) = match &step.node {
            Node::Gemm(g) => {
                let c = &g.config;
                if c.trans_a != 0 {
                    return Err(not_linear("a Gemm with transA"));
                }
                let w_shape = shape(1);
                let w = param(1)?.ok_or_else(|| not_linear("a Gemm without weights"))?;
                let w = Value::F1(w).reshape(&w_shape)?.f2("Gemm weight")?;
                let w = if c.trans_b != 0 { w.transpose() } else { w } * c.alpha;
                (w, param(2)?.map(|b| b * c.beta))
            }
            Node::Linear(l) => {
                let w_shape = shape(1);
                let w = param(1)?.ok_or_else(|| not_linear("a Linear without weights"))?;
                let w = Value::F1(w).reshape(&w_shape)?.f2("Linear weight")?;
                let w = if l.config.transpose_weight { w.transpose() } else { w };
                (w, param(2)?)
            }
            Node::MatMul(_) => {
                let w_shape = shape(1);
                let w = param(1)?.ok_or_else(|| not_linear("a MatMul of two computed values"))?;
                (Value::F1(w).reshape(&w_shape)?.f2("MatMul weight")?, None)
            }
            other => return Err(not_linear(ops::op_name(other))),
        };
        let outputs = weight.dims()[1];
        if let Some(b) = &bias {
            if b.dims()[0] != outputs {
                return Err(not_linear("a layer whose bias is broadcast"));
            }
        }
        Ok(LinearHead { features, weight, bias })
    }

    /// The head from the value `features` (a cut, `[n, k]`) to output `output`, for a graph whose
    /// part after `features` is affine though not one linear layer (a Gemm followed by a scaling
    /// or a bias Add, several linear layers in a row): its weight and bias are read by running
    /// that part on zero and on each unit vector, then checked on `check` (`features` values of
    /// a few images). A part that is not affine is refused, with how far it is off.
    pub fn probed_head(&self, features: &str, output: usize, check: Tensor<2>) -> Result<LinearHead> {
        let p = &self.program;
        let (name, src) = p.outputs.get(output).ok_or_else(|| Error::Invalid(format!("no output {output}")))?;
        let Src::Slot(out_slot) = src else { return Err(Error::Invalid(format!("output {name} is not computed by a node"))) };
        let out_value = p.slot_of.iter().find(|(_, s)| *s == out_slot).map(|(n, _)| n.clone()).expect("every slot has a name");
        let [_, k] = check.dims();
        let device = check.device();
        // Row 0 is zero, row i + 1 the unit vector e_i.
        let mut probe = vec![0.0f32; (k + 1) * k];
        for i in 0..k {
            probe[(i + 1) * k + i] = 1.0;
        }
        let z = Tensor::<2>::from_data(TensorData::new(probe, [k + 1, k]), &device);
        let y = self.resume(features, Value::F2(z), &out_value)?.f2("the head's output")?.detach();
        let d = y.dims()[1];
        let bias = y.clone().slice([0..1, 0..d]).reshape([d]);
        let weight = y.slice([1..k + 1, 0..d]) - bias.clone().reshape([1, d]);
        let direct = self.resume(features, Value::F2(check.clone()), &out_value)?.f2("the head's output")?.detach();
        let affine = check.detach().matmul(weight.clone()) + bias.clone().reshape([1, d]);
        let scale = direct.clone().abs().max().into_scalar::<f32>().max(1.0);
        let off = (direct - affine).abs().max().into_scalar::<f32>();
        if !(off <= 1e-4 * scale) {
            return Err(Error::Unsupported(format!(
                "output {name} is not an affine function of {features}: an affine fit is off by {off:.3e} on image features (scale {scale:.3e})"
            )));
        }
        Ok(LinearHead { features: features.to_string(), weight, bias: Some(bias) })
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

/// A regressor's linear head H(z) = z·W + b, read from the graph.
#[derive(Debug, Clone)]
pub struct LinearHead {
    /// Name of the value H reads: the penultimate features.
    pub features: String,
    /// `[in, out]`, burn's layout.
    pub weight: Tensor<2>,
    pub bias: Option<Tensor<1>>,
}

/// Builds a float tensor of rank 1 to 4 from raw values (for tests and callers without burn's
/// `TensorData` at hand).
pub fn tensor(values: Vec<f32>, shape: &[usize], device: &Device) -> Result<Value> {
    Value::from_data(TensorData::new(values, shape.to_vec()), device)
}
