//! Models trained elsewhere: torchvision-style ResNet-18/34/50 weights from a PyTorch file
//! (`.pt`, `.pth`, `.bin`, `.ckpt`: a state dict, or a checkpoint that nests one) or from
//! safetensors, or any CNN regressor as an ONNX graph (`.onnx`, run by `drmguard-onnx`; its
//! last layer must be linear), described by a TOML card the user writes beside them:
//!
//! ```toml
//! task = "gaze"                  # gaze | headpose | landmarks | classification:N
//! weights = "gaze_resnet18.pth"  # relative to the card
//! architecture = "resnet18"      # optional: inferred from the weights
//! state_dict_key = "state_dict"  # optional: the checkpoint entry holding the state dict
//! key_remap = [["^backbone\\.", ""]]  # optional regex renames, applied first
//!
//! [input]
//! size = 224
//! channel_order = "rgb"          # rgb | bgr
//! range = [0.0, 1.0]             # the values the model takes, e.g. [0.0, 255.0]
//! mean = [0.485, 0.456, 0.406]   # in the model's channel order and range
//! std = [0.229, 0.224, 0.225]
//!
//! [output]
//! names = ["pitch", "yaw"]       # the model's output order; "-yaw" if its sign is opposite
//! units = "radians"              # radians | degrees (angles); fraction | pixels (landmarks); logits
//! graph_output = "landmarks"     # optional: which output of a multi-output ONNX graph
//! features = "gemm2_out1"        # optional: where an ONNX graph's affine head starts
//! ```
//!
//! The imported model works in drmguard's conventions: RGB images in [0, 1] (the card's input
//! transform runs inside the model) and outputs in the task's order and units (the output map
//! is folded into the last layer's weights, so a repaired model saved by drmguard is in these
//! conventions too).

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::store::ModuleSnapshot;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::state_dict::{Store, guarded, open_store};
pub use super::state_dict::{Inferred, StateDict, read_state_dict};
use super::{CARD_FORMAT_VERSION, ModelCard};
use crate::error::{Error, Result};
use crate::models::{Architecture, ChannelOrder, Model, ModelSpec, Normalization};
use crate::task::Task;

/// The card a user writes for a model trained elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportCard {
    pub task: Task,
    /// The weights, relative to the card's folder.
    pub weights: PathBuf,
    /// `resnet18`, `resnet34` or `resnet50`; inferred from the weights when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// The checkpoint entry that holds the state dict (e.g. `state_dict`, `model`). Without it, a
    /// nested state dict is found by its stem convolution's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dict_key: Option<String>,
    /// Regex renames `[from, to]` applied to the tensor names before anything else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_remap: Vec<[String; 2]>,
    pub input: InputCard,
    pub output: OutputCard,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputCard {
    /// Side of the square input image.
    pub size: u32,
    #[serde(default)]
    pub channel_order: ChannelOrder,
    /// The value range the model takes; drmguard's [0, 1] images are mapped onto it.
    #[serde(default = "unit_range")]
    pub range: [f32; 2],
    /// Normalisation the model applies after scaling, in its channel order and range.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

fn unit_range() -> [f32; 2] {
    [0.0, 1.0]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputCard {
    /// The task's output names in the model's output order, each prefixed with `-` when the
    /// model's sign convention is the opposite of drmguard's (see [`Task`]; angles only).
    pub names: Vec<String>,
    pub units: Units,
    /// For an ONNX graph with several outputs (MTCNN's ONet: box, landmarks, face probability),
    /// the name of the one the card describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_output: Option<String>,
    /// For an ONNX graph whose output is affine in some value but not computed by one linear
    /// layer of it (a Gemm followed by a scaling, two linear layers in a row): that value, by
    /// the name `drmguard inspect` prints. The head is then read by probing and checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<String>,
}

/// Units of a foreign model's outputs: angles for gaze and head pose, image coordinates for
/// landmarks, logits for classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Units {
    Radians,
    Degrees,
    /// Fractions of the input image's side (MTCNN's landmarks).
    Fraction,
    /// Pixels of the input image (its side is the card's `input.size`).
    Pixels,
    /// A classifier's scores before the softmax, one per class.
    Logits,
}

impl Units {
    /// The factor that turns an output in these units into drmguard's (radians; fractions of
    /// the side; logits), or why these units do not fit the task.
    fn factor(self, task: Task, input_size: u32) -> Result<f32> {
        let (fits, expected): (&[Units], &str) = match task {
            Task::Gaze | Task::HeadPose => (&[Units::Radians, Units::Degrees], "radians or degrees"),
            Task::Landmarks => (&[Units::Fraction, Units::Pixels], "fraction or pixels"),
            Task::Classification { .. } => (&[Units::Logits], "logits"),
        };
        if !fits.contains(&self) {
            return Err(Error::invalid("output units", format!("{self:?} for task {task} (expected {expected})").to_lowercase()));
        }
        Ok(match self {
            Units::Radians | Units::Fraction | Units::Logits => 1.0,
            Units::Degrees => std::f32::consts::PI / 180.0,
            Units::Pixels => 1.0 / input_size as f32,
        })
    }
}

/// What the import did, kept in the card of the imported model (and of a model repaired from it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRecord {
    /// The user's card, as written.
    pub card: ImportCard,
    pub card_path: PathBuf,
    pub weights_path: PathBuf,
    pub weights_sha256: String,
    /// Prefix removed from every tensor name (`module.`, a checkpoint key, …).
    pub stripped_prefix: String,
    /// Tensors of the file that are not the network's (optimiser state, counters, …).
    pub ignored_tensors: Vec<String>,
}

/// The file formats weights come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsFormat {
    Pytorch,
    Safetensors,
    Onnx,
}

impl WeightsFormat {
    pub fn of(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("pt" | "pth" | "bin" | "ckpt" | "tar") => Ok(WeightsFormat::Pytorch),
            Some("safetensors") => Ok(WeightsFormat::Safetensors),
            Some("onnx") => Ok(WeightsFormat::Onnx),
            _ => Err(Error::invalid(
                "weights file",
                format!("{} (expected .pt, .pth, .bin, .ckpt, .safetensors or .onnx)", path.display()),
            )),
        }
    }
}

/// Reads and checks a card; its `weights` path is resolved against the card's folder.
pub fn read_card(path: &Path) -> Result<ImportCard> {
    let text = std::fs::read_to_string(path).map_err(|cause| Error::Read { path: path.to_path_buf(), cause })?;
    let mut card: ImportCard =
        toml::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), message: format!("model card: {e}") })?;
    let bad = |message: String| Error::Json { path: path.to_path_buf(), message };
    if card.weights.is_relative() {
        card.weights = path.parent().unwrap_or(Path::new(".")).join(&card.weights);
    }
    let onnx = WeightsFormat::of(&card.weights).map_err(|e| bad(e.to_string()))? == WeightsFormat::Onnx;
    match (&card.architecture, onnx) {
        (Some(name), true) if !name.eq_ignore_ascii_case("onnx") => {
            return Err(bad(format!("architecture {name} for an ONNX graph (leave it out, or write \"onnx\")")));
        }
        (Some(name), false) => {
            architecture_by_name(name, 1).map_err(|e| bad(e.to_string()))?;
        }
        _ => {}
    }
    if onnx && (card.state_dict_key.is_some() || !card.key_remap.is_empty()) {
        return Err(bad("state_dict_key and key_remap apply to PyTorch and safetensors weights, not to an ONNX graph".into()));
    }
    output_map(card.task, &card.output, card.input.size).map_err(|e| bad(e.to_string()))?;
    if !onnx && (card.output.graph_output.is_some() || card.output.features.is_some()) {
        return Err(bad("graph_output and features name values of an ONNX graph; these weights are not one".into()));
    }
    input_spec(&card, Architecture::Resnet18 { width: 64 }).validate().map_err(|e| bad(e.to_string()))?;
    Ok(card)
}

/// The ResNets a state dict can be imported as.
fn importable(width: usize) -> [Architecture; 3] {
    [Architecture::Resnet18 { width }, Architecture::Resnet34 { width }, Architecture::Resnet50 { width }]
}

pub(super) fn architecture_by_name(name: &str, width: usize) -> Result<Architecture> {
    let wanted = name.to_ascii_lowercase().replace(['-', '_'], "");
    importable(width).into_iter().find(|a| a.name() == wanted).ok_or_else(|| Error::UnknownName {
        what: "architecture",
        name: name.into(),
        expected: importable(width).map(|a| a.name()).join(", "),
    })
}

fn input_spec(card: &ImportCard, architecture: Architecture) -> ModelSpec {
    ModelSpec {
        architecture,
        input_size: card.input.size,
        input_range: card.input.range,
        channel_order: card.input.channel_order,
        normalization: Normalization { mean: card.input.mean, std: card.input.std },
        outputs: card.task.output_dim(),
    }
}

/// For each of the task's outputs (in its order): the model's output index and the factor
/// (sign × unit conversion) that turns it into drmguard's convention.
fn output_map(task: Task, output: &OutputCard, input_size: u32) -> Result<Vec<(usize, f32)>> {
    let expected = task.output_names();
    let problem = |what: String| {
        Error::invalid(
            "output names",
            format!("{:?}: {what} (task {task} has outputs {}; prefix a name with '-' to flip its sign)", output.names, expected.join(", ")),
        )
    };
    if output.names.len() != expected.len() {
        return Err(problem(format!("{} names for {} outputs", output.names.len(), expected.len())));
    }
    let scale = output.units.factor(task, input_size)?;
    if !task.is_angular() {
        if let Some(name) = output.names.iter().find(|n| n.starts_with('-')) {
            return Err(problem(format!("'{name}': a sign flip applies to angles only")));
        }
    }
    expected
        .iter()
        .map(|want| {
            let found: Vec<(usize, f32)> = output
                .names
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let (sign, bare) = match name.strip_prefix('-') {
                        Some(bare) => (-1.0, bare),
                        None => (1.0, name.as_str()),
                    };
                    bare.eq_ignore_ascii_case(want).then_some((i, sign * scale))
                })
                .collect();
            match found.as_slice() {
                [one] => Ok(*one),
                [] => Err(problem(format!("'{want}' is missing"))),
                _ => Err(problem(format!("'{want}' appears more than once"))),
            }
        })
        .collect()
}

/// Imports the model a card describes.
pub fn load(card_path: &Path, device: &Device) -> Result<(Model, ModelCard)> {
    let card = read_card(card_path)?;
    if WeightsFormat::of(&card.weights)? == WeightsFormat::Onnx {
        return load_onnx(card_path, card, device);
    }
    let dict = read_state_dict(&card.weights, card.state_dict_key.as_deref(), &card.key_remap)?;
    let inferred = dict.infer()?;
    let weights_err = |message: String| Error::Weights { path: card.weights.clone(), message };
    if let Some(name) = &card.architecture {
        let declared = architecture_by_name(name, inferred.architecture.width())?;
        if declared != inferred.architecture {
            return Err(weights_err(format!(
                "the card says {name}, the weights are a {} (width {})",
                inferred.architecture.name(),
                inferred.architecture.width()
            )));
        }
    }
    let map = output_map(card.task, &card.output, card.input.size)?;
    if inferred.outputs != map.len() {
        return Err(weights_err(format!(
            "the model has {} outputs, the card names {} ({})",
            inferred.outputs,
            map.len(),
            card.output.names.join(", ")
        )));
    }
    let spec = input_spec(&card, inferred.architecture.clone());
    let mut model = spec.init(device, 0)?;

    let mut remaps: Vec<(String, String)> = card.key_remap.iter().map(|[a, b]| (a.clone(), b.clone())).collect();
    if !dict.prefix.is_empty() {
        remaps.push((format!("^{}", regex::escape(&dict.prefix)), String::new()));
    }
    remaps.extend(super::torchvision_to_drmguard());
    let result = guarded(&card.weights, || match open_store(&card.weights, dict.format, card.state_dict_key.as_deref(), &remaps) {
        Store::Pytorch(mut s) => model.load_from(&mut s).map_err(|e| e.to_string()),
        Store::Safetensors(mut s) => model.load_from(&mut s).map_err(|e| e.to_string()),
    })?;
    let ignored = dict.ignored();
    // After the renames, a network tensor no longer carries the prefix.
    let expected_extra = |k: &str| k.ends_with("num_batches_tracked") || ignored.iter().any(|i| i == k);
    if let Some(problem) = super::incomplete_load(&result, expected_extra) {
        return Err(weights_err(format!(
            "the weights do not fit a {} of width {}: {problem}",
            inferred.architecture.name(),
            inferred.architecture.width()
        )));
    }
    let model = fold_output_map(model, &map, device);
    let record = ImportRecord {
        card_path: card_path.to_path_buf(),
        weights_path: card.weights.clone(),
        weights_sha256: sha256_file(&card.weights)?,
        stripped_prefix: dict.prefix.clone(),
        ignored_tensors: ignored,
        card: card.clone(),
    };
    Ok((model, imported_card(card, spec, record)))
}

/// Imports an ONNX graph: its head is split off as `fc`, and the output map folded into it.
fn load_onnx(card_path: &Path, card: ImportCard, device: &Device) -> Result<(Model, ModelCard)> {
    if !card.weights.is_file() {
        return Err(Error::Read {
            path: card.weights.clone(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such ONNX file"),
        });
    }
    // Absolute, so that a repaired model saved elsewhere still finds its graph.
    let graph = card.weights.canonicalize().map_err(|cause| Error::Read { path: card.weights.clone(), cause })?;
    let spec = input_spec(&card, Architecture::Onnx { graph: graph.clone(), output: card.output.graph_output.clone(), features: card.output.features.clone() });
    let map = output_map(card.task, &card.output, card.input.size)?;
    // The card names one output per task output: the graph must have as many.
    let model = fold_output_map(spec.init(device, 0)?, &map, device);
    let record = ImportRecord {
        card_path: card_path.to_path_buf(),
        weights_path: card.weights.clone(),
        weights_sha256: sha256_file(&graph)?,
        stripped_prefix: String::new(),
        ignored_tensors: Vec::new(),
        card: card.clone(),
    };
    Ok((model, imported_card(card, spec, record)))
}

fn imported_card(card: ImportCard, spec: ModelSpec, record: ImportRecord) -> ModelCard {
    ModelCard {
        format_version: CARD_FORMAT_VERSION,
        drmguard_version: env!("CARGO_PKG_VERSION").into(),
        task: card.task,
        output_names: card.task.output_names(),
        output_units: card.task.label_units().into(),
        model: spec,
        trained: None,
        imported: Some(record),
        backdoor: None,
        mitigation: None,
    }
}

/// Reorders, flips and rescales the head's outputs: output j of the result is
/// `factor_j · (model output i_j)` for `map[j] = (i_j, factor_j)`.
fn fold_output_map(model: Model, map: &[(usize, f32)], device: &Device) -> Model {
    let index = Tensor::<1, Int>::from_ints(map.iter().map(|(i, _)| *i as i32).collect::<Vec<_>>().as_slice(), device);
    let factor = Tensor::<1>::from_floats(map.iter().map(|(_, f)| *f).collect::<Vec<_>>().as_slice(), device);
    model.map_head(|mut fc| {
        // burn stores the weight as [in, out]: one column per output.
        let w = fc.weight.val().select(1, index.clone()) * factor.clone().reshape([1, -1]);
        fc.weight = Param::from_tensor(w);
        fc.bias = fc.bias.map(|b| Param::from_tensor(b.val().select(0, index.clone()) * factor.clone()));
        fc
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let read_err = |cause| Error::Read { path: path.to_path_buf(), cause };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
