//! From an ONNX file to the program the model runs: onnx-ir's graph, with integer chains on
//! constants folded, float initializers turned into parameters, and the remaining nodes in
//! execution order, each input resolved to where its value comes from.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use onnx_ir::{ArgType, Argument, Node, OnnxGraphBuilder, ValueSource};

use crate::{Error, Result, Value, fold, ops};

/// Where a node input comes from.
#[derive(Debug, Clone)]
pub(crate) enum Src {
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
pub(crate) struct Step {
    pub(crate) node: Node,
    pub(crate) inputs: Vec<Src>,
    pub(crate) outputs: Vec<usize>,
}

/// The interpreted graph: steps in execution order, the initializers' shapes and where the
/// outputs come from.
#[derive(Debug)]
pub(crate) struct Program {
    pub(crate) steps: Vec<Step>,
    pub(crate) param_shapes: Vec<Vec<usize>>,
    pub(crate) param_names: Vec<String>,
    /// The graph inputs' names and declared shapes (`None` for a dynamic axis).
    pub(crate) inputs: Vec<(String, Vec<Option<usize>>)>,
    pub(crate) outputs: Vec<(String, Src)>,
    pub(crate) slots: usize,
    /// Slot of each value by name, for reading an inner node's value.
    pub(crate) slot_of: HashMap<String, usize>,
    /// The step that computes each slot.
    pub(crate) producer: Vec<usize>,
}

/// The names the file gives its graph outputs (`None` if it cannot be read again, which the
/// parse that succeeded before makes unlikely).
fn file_output_names(path: &Path) -> Option<Vec<String>> {
    use onnx_ir::Message;
    let bytes = std::fs::read(path).ok()?;
    let model = std::panic::catch_unwind(|| onnx_ir::ModelProto::parse_from_bytes(&bytes)).ok()?.ok()?;
    Some(model.graph.output.iter().map(|o| o.name.clone()).collect())
}

/// The largest ONNX file read: protobuf's own bound on one message. A larger file is refused
/// before a byte of it is parsed.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// The most nodes a graph may have. The image models drmguard scans have a few hundred at most;
/// the bound keeps a crafted graph from making the compiled program, and each pass through it,
/// arbitrarily long.
pub const MAX_NODES: usize = 100_000;

/// Refuses a graph of more than [`MAX_NODES`] nodes.
fn check_node_count(nodes: usize) -> std::result::Result<(), String> {
    if nodes > MAX_NODES {
        return Err(format!("the graph has {nodes} nodes, more than the {MAX_NODES} drmguard reads"));
    }
    Ok(())
}

/// Parses `path` and compiles its graph: the float initializers (trainable) and the program
/// that interprets the rest; every operator is checked here.
pub(crate) fn compile(path: &Path, device: &Device) -> Result<(Vec<Param<Tensor<1>>>, Program)> {
    let parse_err = |message: String| Error::Parse { path: path.display().to_string(), message };
    if !path.is_file() {
        return Err(parse_err("no such file".into()));
    }
    let bytes = std::fs::metadata(path).map_err(|e| parse_err(e.to_string()))?.len();
    if bytes > MAX_FILE_BYTES {
        return Err(parse_err(format!("{bytes} bytes, more than protobuf's limit of {MAX_FILE_BYTES} on one message")));
    }
    // onnx-ir is third-party code: a crafted file must not crash the process.
    let graph = std::panic::catch_unwind(|| OnnxGraphBuilder::new().parse_file(path))
        .map_err(|_| parse_err("the file is malformed (the parser gave up)".into()))?
        .map_err(|e| parse_err(e.to_string()))?;
    check_node_count(graph.nodes.len()).map_err(parse_err)?;
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
    Ok((params, program))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_graph_beyond_the_node_bound_is_refused() {
        assert!(super::check_node_count(super::MAX_NODES).is_ok());
        let err = super::check_node_count(super::MAX_NODES + 1).unwrap_err();
        assert!(err.contains("100001 nodes"), "{err}");
    }
}
