//! What drmguard understands of a model file, and what it still needs: for `drmguard inspect`.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use drmguard_onnx::OnnxModel;

use super::import::{self, Inferred, StateDict, WeightsFormat};
use super::{ModelCard, card_path};
use crate::error::Result;
use crate::models::onnx::OnnxLayers;
use crate::models::{Architecture, Model, ModelSpec};
use crate::task::Task;

/// One stage of the network with the shape of its output for the model's input size.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    pub layers: String,
    /// `[channels, height, width]`, or `[features]` for the pooled features and the outputs.
    pub output_shape: Vec<usize>,
}

/// A model file as drmguard sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub path: String,
    /// `drmguard model`, `imported model`, `weights without a card` or `ONNX graph without a card`.
    pub kind: &'static str,
    pub architecture: Option<String>,
    pub width: Option<usize>,
    /// Trainable parameters (PyTorch's `parameters()`, without BatchNorm's running statistics).
    pub parameters: Option<usize>,
    pub stages: Vec<Stage>,
    /// Where DRMGuard reads the penultimate features.
    pub feature_layer: Option<String>,
    /// The card, when there is one (its input transform, task and outputs).
    pub card: Option<ModelCard>,
    /// What the weights file holds, when it was read directly.
    pub tensors: Option<usize>,
    pub stripped_prefix: Option<String>,
    pub ignored_tensors: Vec<String>,
    /// What drmguard still needs before it can scan the model.
    pub missing: Vec<String>,
    /// A card to fill in, for weights without one.
    pub card_template: Option<String>,
}

/// What bare weights or a bare graph lack.
const MISSING_CARD: &str = "a model card (TOML) beside the weights: the task, the input size, channel order, value range and normalisation, and the outputs' names and units. Fill in the template below, then pass the card as --model";

/// Inspects a drmguard model (`.safetensors` with its `.json` sidecar), an imported model (its
/// `.toml` card), or bare weights (`.pt`, `.pth`, `.safetensors` without a sidecar).
pub fn inspect(path: &Path, state_dict_key: Option<&str>, device: &Device) -> Result<Inspection> {
    let is_card = path.extension().and_then(|e| e.to_str()) == Some("toml");
    let native = path.extension().and_then(|e| e.to_str()) == Some("safetensors") && card_path(path).is_file();
    if is_card || native {
        let (model, card) = super::load(path, device)?;
        let kind = if card.imported.is_some() { "imported model" } else { "drmguard model" };
        let (parameters, stages, feature_layer) = match &model {
            // The graph's own initializers (its copy of the head included), as the file has them.
            Model::Onnx(m) => (m.net.num_params(), onnx_stages(&m.net, &m.layers, card.model.input_size, card.model.outputs), onnx_feature_layer(&m.layers)),
            _ => {
                let running_stats: usize = model.batch_norms().iter().map(|bn| 2 * bn.gamma.val().dims()[0]).sum();
                (model.num_params() - running_stats, stages(&card.model), feature_layer(&card.model.architecture))
            }
        };
        return Ok(Inspection {
            path: path.display().to_string(),
            kind,
            architecture: Some(card.model.architecture.name().into()),
            width: Some(card.model.architecture.width()).filter(|w| *w > 0),
            parameters: Some(parameters),
            stages,
            feature_layer: Some(feature_layer),
            stripped_prefix: card.imported.as_ref().map(|r| r.stripped_prefix.clone()),
            ignored_tensors: card.imported.as_ref().map(|r| r.ignored_tensors.clone()).unwrap_or_default(),
            card: Some(card),
            tensors: None,
            missing: Vec::new(),
            card_template: None,
        });
    }
    if WeightsFormat::of(path)? == WeightsFormat::Onnx {
        return inspect_bare_onnx(path, device);
    }
    let dict = import::read_state_dict(path, state_dict_key, &[])?;
    let inferred = dict.infer();
    let mut missing = vec![MISSING_CARD.to_string()];
    if let Err(e) = &inferred {
        missing.insert(0, format!("a network drmguard can build: {e}"));
    }
    let inferred = inferred.ok();
    let spec = inferred.as_ref().map(|i| ModelSpec {
        architecture: i.architecture.clone(),
        input_size: 224,
        input_range: [0.0, 1.0],
        channel_order: Default::default(),
        normalization: crate::models::Normalization::imagenet(),
        outputs: i.outputs,
    });
    Ok(Inspection {
        path: path.display().to_string(),
        kind: "weights without a card",
        architecture: inferred.as_ref().map(|i| i.architecture.name().into()),
        width: inferred.as_ref().map(|i| i.architecture.width()),
        parameters: inferred.as_ref().map(|i| i.parameters),
        stages: spec.as_ref().map(stages).unwrap_or_default(),
        feature_layer: inferred.as_ref().map(|i| feature_layer(&i.architecture)),
        card: None,
        tensors: Some(dict.shapes.len()),
        stripped_prefix: Some(dict.prefix.clone()),
        ignored_tensors: dict.ignored(),
        missing,
        card_template: Some(card_template(path, &dict, inferred.as_ref(), state_dict_key)),
    })
}

fn feature_layer(architecture: &Architecture) -> String {
    format!("the input of `fc` (globally pooled, {} features)", architecture.feature_width().unwrap_or_default())
}

fn onnx_feature_layer(layers: &OnnxLayers) -> String {
    format!("`{}`, the input of the last linear layer ({} features)", layers.features, layers.feature_width)
}

fn onnx_stages(net: &OnnxModel, layers: &OnnxLayers, size: u32, outputs: usize) -> Vec<Stage> {
    let ops: Vec<String> = net.op_counts().into_iter().map(|(op, n)| format!("{op} ×{n}")).collect();
    let s = size as usize;
    let mut stages = vec![Stage { name: "graph".into(), layers: ops.join(", "), output_shape: vec![3, s, s] }];
    if let Some(inner) = &layers.inner {
        stages.push(Stage { name: "inner".into(), layers: format!("`{inner}`: where ABS stimulates neurons"), output_shape: vec![] });
    }
    stages.push(Stage { name: "features".into(), layers: format!("`{}`", layers.features), output_shape: vec![layers.feature_width] });
    stages.push(Stage { name: "fc".into(), layers: "the graph's last linear layer".into(), output_shape: vec![outputs] });
    stages
}

/// An ONNX graph without a card: what runs, where the features are, and the card to write.
fn inspect_bare_onnx(path: &Path, device: &Device) -> Result<Inspection> {
    let net = OnnxModel::load(path, device).map_err(|e| crate::error::Error::Weights { path: path.to_path_buf(), message: e.to_string() })?;
    let declared = net.input().map(|(_, d)| d.to_vec()).unwrap_or_default();
    let size = declared.get(2).copied().flatten().unwrap_or(224) as u32;
    let mut missing = vec![MISSING_CARD.to_string()];
    let names: Vec<String> = net.output_names().into_iter().map(String::from).collect();
    // With several outputs (a detector's box, landmarks and score), the first linear one whose
    // width is a task's is the likely regression.
    let heads: Vec<_> = (0..names.len()).map(|i| net.linear_head(i)).collect();
    let width = |i: usize| heads[i].as_ref().ok().map(|h| h.weight.dims()[1]);
    let chosen = (0..names.len())
        .find(|&i| width(i).is_some_and(|d| Task::ALL.iter().any(|t| t.output_dim() == d)))
        .or_else(|| (0..names.len()).find(|&i| width(i).is_some()))
        .unwrap_or(0);
    let graph_output = (names.len() > 1).then(|| names[chosen].as_str());
    if let Some(name) = graph_output {
        let listed: Vec<String> = (0..names.len())
            .map(|i| match width(i) {
                Some(d) => format!("{}: linear, {d} values", names[i]),
                None => format!("{}: not a linear layer", names[i]),
            })
            .collect();
        missing.push(format!(
            "which graph output is the regression: the graph has {} ({}); the template names {name} as graph_output",
            names.len(),
            listed.join("; ")
        ));
    }
    let head = heads.into_iter().nth(chosen).expect("the graph has at least one output");
    let (stages, feature_layer, outputs) = match &head {
        Ok(h) => {
            let [k, d] = h.weight.dims();
            let layers = OnnxLayers { features: h.features.clone(), feature_width: k, inner: None };
            (onnx_stages(&net, &layers, size, d), Some(onnx_feature_layer(&layers)), d)
        }
        Err(e) => {
            // Values the head could start from instead (`features` in the card's [output]).
            let x = burn::tensor::Tensor::<4>::zeros([2, 3, size as usize, size as usize], device);
            let candidates: Vec<String> = net
                .shapes(x)
                .map(|shapes| shapes.into_iter().filter(|(n, d)| d.len() == 2 && net.is_cut(n)).map(|(n, d)| format!("{n} [n, {}]", d[1])).collect())
                .unwrap_or_default();
            let hint = if candidates.is_empty() {
                String::new()
            } else {
                format!("; if the output is affine in one of the values {}, name it with `features` in the card's [output]", candidates.join(", "))
            };
            missing.insert(0, format!("a linear last layer: {e}{hint}"));
            (Vec::new(), None, 2)
        }
    };
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Inspection {
        path: path.display().to_string(),
        kind: "ONNX graph without a card",
        architecture: Some("onnx".into()),
        width: None,
        parameters: Some(net.num_params()),
        stages,
        feature_layer,
        card: None,
        tensors: Some(net.parameters().count()),
        stripped_prefix: None,
        ignored_tensors: Vec::new(),
        missing,
        card_template: Some(template_text(&file, None, None, outputs, size, graph_output)),
    })
}

/// The stages of the network and their output shapes for the spec's input size (shapes for 224
/// when the size is not known yet).
fn stages(spec: &ModelSpec) -> Vec<Stage> {
    let s = spec.input_size as usize;
    let half = |n: usize| n.div_ceil(2);
    let w = spec.architecture.width();
    let features = spec.architecture.feature_width();
    let mut out = Vec::new();
    let mut push = |name: &str, layers: String, shape: Vec<usize>| out.push(Stage { name: name.into(), layers, output_shape: shape });
    match &spec.architecture {
        // Described from the loaded graph instead (see `onnx_stages`).
        Architecture::Onnx { .. } => {}
        Architecture::SmallCnn { .. } => {
            let mut size = s;
            for (i, c) in [w, 2 * w, 4 * w].into_iter().enumerate() {
                size = half(size);
                push(&format!("blocks.{i}"), "conv 3×3 stride 2, BatchNorm, ReLU".into(), vec![c, size, size]);
            }
        }
        arch => {
            let bottleneck = matches!(arch, Architecture::Resnet50 { .. });
            let blocks = match arch {
                Architecture::Resnet18 { .. } => [2, 2, 2, 2],
                _ => [3, 4, 6, 3],
            };
            let mut size = half(half(s));
            push("stem", "conv1 7×7 stride 2, bn1, ReLU, max-pool 3×3 stride 2".into(), vec![w, size, size]);
            for (i, n) in blocks.into_iter().enumerate() {
                if i > 0 {
                    size = half(size);
                }
                let c = (w << i) * if bottleneck { 4 } else { 1 };
                let kind = if bottleneck { "bottleneck blocks (1×1, 3×3, 1×1)" } else { "basic blocks (3×3, 3×3)" };
                push(&format!("layer{}", i + 1), format!("{n} {kind}"), vec![c, size, size]);
            }
        }
    }
    push("pool", "global average pooling: the penultimate features".into(), vec![features.unwrap_or_default()]);
    push("fc", "linear head".into(), vec![spec.outputs]);
    out
}

fn card_template(weights: &Path, dict: &StateDict, inferred: Option<&Inferred>, state_dict_key: Option<&str>) -> String {
    let file = weights.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = (dict.format == WeightsFormat::Pytorch && !dict.prefix.is_empty()).then_some(dict.prefix.as_str());
    let mut t = template_text(&file, inferred, prefix, inferred.map_or(2, |i| i.outputs), 224, None);
    if let Some(key) = state_dict_key {
        t = t.replacen("\n\n[input]", &format!("\nstate_dict_key = \"{key}\"\n\n[input]"), 1);
    }
    t
}

fn template_text(file: &str, inferred: Option<&Inferred>, prefix: Option<&str>, outputs: usize, size: u32, graph_output: Option<&str>) -> String {
    let task = match outputs {
        3 => Task::HeadPose,
        10 => Task::Landmarks,
        n if n > 3 && n <= crate::task::MAX_CLASSES as usize => Task::Classification { classes: n as u16 },
        _ => Task::Gaze,
    };
    let names: Vec<String> = task.output_names().iter().map(|n| format!("\"{n}\"")).collect();
    let mut t = String::new();
    t.push_str("# drmguard model card: check every value against how the model was trained.\n");
    t.push_str(&format!("task = \"{task}\"                 # gaze | headpose | landmarks | classification:N (N logits)\n"));
    t.push_str(&format!("weights = \"{file}\"\n"));
    if let Some(i) = inferred {
        t.push_str(&format!("architecture = \"{}\"        # read from the weights (width {})\n", i.architecture.name(), i.architecture.width()));
    }
    if let Some(prefix) = prefix {
        t.push_str(&format!("# the state dict's names start with \"{prefix}\": drmguard strips it\n"));
    }
    t.push_str("\n[input]\n");
    t.push_str(&format!("size = {size:<26}# side of the square input image\n"));
    t.push_str("channel_order = \"rgb\"           # rgb | bgr (OpenCV)\n");
    t.push_str("range = [0.0, 1.0]              # the values the model takes, e.g. [0.0, 255.0]\n");
    t.push_str("mean = [0.485, 0.456, 0.406]    # in the model's channel order and range\n");
    t.push_str("std = [0.229, 0.224, 0.225]\n");
    t.push_str("\n[output]\n");
    t.push_str(&format!("names = [{}]          # the model's output order{}\n", names.join(", "), if task.is_angular() { "; \"-yaw\" flips a sign" } else { "" }));
    match task {
        Task::Gaze | Task::HeadPose => t.push_str("units = \"radians\"               # radians | degrees\n"),
        Task::Landmarks => t.push_str("units = \"fraction\"              # fraction (of the input side) | pixels\n"),
        Task::Classification { .. } => t.push_str("units = \"logits\"                # scores before the softmax\n"),
    }
    if let Some(name) = graph_output {
        t.push_str(&format!("graph_output = \"{name}\"        # the graph's output this card describes\n"));
    }
    t
}
