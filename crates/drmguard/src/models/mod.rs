//! Regression models f = H ∘ F: a backbone F to penultimate features and one linear head H.

pub mod cache;
pub mod inference;
pub mod generator;
pub mod onnx;
pub mod resize;
pub mod resnet;
pub mod small_cnn;

use burn::module::Module;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use onnx::OnnxRegressor;
pub use resnet::{Depth, ResNet};
pub use small_cnn::SmallCnn;

/// What every defense needs from a model: its penultimate features, its head, and the head's
/// weight rows w_j (one per output), whose angles to the features DRMGuard regularises.
pub trait Regressor {
    /// F: images `[n, 3, S, S]` with values in [0, 1] to features `[n, k]`.
    fn features(&self, x: Tensor<4>) -> Tensor<2>;
    /// H: features `[n, k]` to outputs `[n, d]`.
    fn head(&self, z: Tensor<2>) -> Tensor<2>;
    /// H's weight rows, `[d, k]`.
    fn head_weight(&self) -> Tensor<2>;

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head(self.features(x))
    }
}

/// The angles α_j (radians) between each feature row of `z` (`[n, k]`) and each head weight row
/// w_j of `weight` (`[d, k]`), `[n, d]`. The cosine is clamped away from ±1, where the derivative
/// of acos is infinite.
pub fn feature_angles(z: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    let dots = z.clone().matmul(weight.clone().transpose());
    let z_norm = z.powi_scalar(2).sum_dim(1).sqrt(); // [n, 1]
    let w_norm = weight.powi_scalar(2).sum_dim(1).sqrt().reshape([1, -1]); // [1, d]
    let cos = dots / (z_norm * w_norm + 1e-8);
    cos.clamp(-1.0 + 1e-6, 1.0 - 1e-6).acos()
}

/// Per-channel input normalisation, in the model's own channel order and value range (see
/// [`ModelSpec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// torchvision's ImageNet statistics, so that ImageNet-style weights can be used as they are.
    pub fn imagenet() -> Self {
        Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
    }

    pub fn validate(&self) -> Result<()> {
        if self.mean.iter().chain(&self.std).any(|v| !v.is_finite()) || self.std.iter().any(|s| *s <= 0.0) {
            return Err(Error::invalid(
                "input normalisation",
                format!("mean {:?}, std {:?} (must be finite, std > 0)", self.mean, self.std),
            ));
        }
        Ok(())
    }
}

/// Order of the colour channels a model expects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    #[default]
    Rgb,
    /// OpenCV's order, common in models trained on `cv2.imread` images.
    Bgr,
}

/// What a model does to its input before the first layer, so that callers (and generators) always
/// work with RGB images in [0, 1]: scale to the model's value range, reorder the channels, then
/// normalise.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    range: [f32; 2],
    order: ChannelOrder,
    norm: Normalization,
}

impl Preprocess {
    pub fn of(spec: &ModelSpec) -> Self {
        Preprocess { range: spec.input_range, order: spec.channel_order, norm: spec.normalization.clone() }
    }

    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        let [lo, hi] = self.range;
        let x = if [lo, hi] == [0.0, 1.0] { x } else { x * (hi - lo) + lo };
        let x = match self.order {
            ChannelOrder::Rgb => x,
            ChannelOrder::Bgr => x.flip([1]),
        };
        let mean = Tensor::<1>::from_floats(self.norm.mean, &device).reshape([1, 3, 1, 1]);
        let std = Tensor::<1>::from_floats(self.norm.std, &device).reshape([1, 3, 1, 1]);
        (x - mean) / std
    }
}

/// The architectures drmguard builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Architecture {
    /// torchvision's ResNet-18 with every stage's width scaled: `width` = 64 is the original.
    Resnet18 { width: usize },
    /// torchvision's ResNet-34, widths scaled as ResNet-18's.
    Resnet34 { width: usize },
    /// torchvision's ResNet-50 (bottleneck blocks, features 32·width wide).
    Resnet50 { width: usize },
    /// A three-stage CNN for tests.
    SmallCnn { width: usize },
    /// A graph from an ONNX file (see [`onnx`]); its weights are the file's until a saved
    /// model's weights replace them. `output` names the graph output that is the regression
    /// (needed when the graph has several), `features` the value H starts from.
    Onnx {
        graph: std::path::PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        /// The penultimate features, when they are not the input of a last linear layer (see
        /// [`OnnxRegressor::load`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        features: Option<String>,
    },
}

impl Architecture {
    /// The stem width (0 for an ONNX graph, which has none).
    pub fn width(&self) -> usize {
        match self {
            Architecture::Resnet18 { width }
            | Architecture::Resnet34 { width }
            | Architecture::Resnet50 { width }
            | Architecture::SmallCnn { width } => *width,
            Architecture::Onnx { .. } => 0,
        }
    }

    /// The same architecture with another width.
    pub fn with_width(self, width: usize) -> Self {
        match self {
            Architecture::Resnet18 { .. } => Architecture::Resnet18 { width },
            Architecture::Resnet34 { .. } => Architecture::Resnet34 { width },
            Architecture::Resnet50 { .. } => Architecture::Resnet50 { width },
            Architecture::SmallCnn { .. } => Architecture::SmallCnn { width },
            Architecture::Onnx { .. } => self,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Architecture::Resnet18 { .. } => "resnet18",
            Architecture::Resnet34 { .. } => "resnet34",
            Architecture::Resnet50 { .. } => "resnet50",
            Architecture::SmallCnn { .. } => "small-cnn",
            Architecture::Onnx { .. } => "onnx",
        }
    }

    /// Width of the penultimate features (for an ONNX graph, known once it is loaded).
    pub fn feature_width(&self) -> Option<usize> {
        match self {
            Architecture::Onnx { .. } => None,
            Architecture::SmallCnn { width } => Some(4 * width),
            _ => self.depth().map(|depth| depth.feature_width(self.width())),
        }
    }

    fn depth(&self) -> Option<Depth> {
        match self {
            Architecture::Resnet18 { .. } => Some(Depth::R18),
            Architecture::Resnet34 { .. } => Some(Depth::R34),
            Architecture::Resnet50 { .. } => Some(Depth::R50),
            Architecture::SmallCnn { .. } | Architecture::Onnx { .. } => None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Architecture::Onnx { graph, .. } = self {
            if !graph.is_file() {
                return Err(Error::Read {
                    path: graph.clone(),
                    cause: std::io::Error::new(std::io::ErrorKind::NotFound, "the model's ONNX graph is missing"),
                });
            }
            return Ok(());
        }
        let width = self.width();
        if !(1..=1024).contains(&width) {
            return Err(Error::invalid("model width", format!("{width} (must be within 1..=1024)")));
        }
        Ok(())
    }
}

/// Everything needed to build a model again before loading its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub architecture: Architecture,
    /// Side of the square RGB input.
    pub input_size: u32,
    /// Range of the input values the model expects, before normalisation: drmguard's images in
    /// [0, 1] are mapped linearly onto it (e.g. [0, 255]).
    pub input_range: [f32; 2],
    /// Channel order the model expects (drmguard's images are RGB).
    #[serde(default)]
    pub channel_order: ChannelOrder,
    /// Applied after scaling and reordering, in the model's channel order.
    pub normalization: Normalization,
    pub outputs: usize,
}

impl ModelSpec {
    pub fn validate(&self) -> Result<()> {
        self.architecture.validate()?;
        crate::data::validate_image_size(self.input_size)?;
        if self.outputs == 0 || self.outputs > 4096 {
            return Err(Error::invalid("model outputs", format!("{} (must be within 1..=4096)", self.outputs)));
        }
        let [lo, hi] = self.input_range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::invalid("model input range", format!("[{lo}, {hi}] (must be finite, low < high)")));
        }
        self.normalization.validate()
    }

    /// Builds the model with weights drawn from `seed`.
    pub fn init(&self, device: &Device, seed: u64) -> Result<Model> {
        self.validate()?;
        let pre = Preprocess::of(self);
        if let Architecture::Onnx { graph, output, features } = &self.architecture {
            return Ok(Model::Onnx(OnnxRegressor::load(graph, output.as_deref(), features.as_deref(), self.input_size, self.outputs, pre, device)?));
        }
        Ok(init_seeded(device, seed, || match self.architecture.depth() {
            Some(depth) => Model::Resnet(ResNet::new(depth, self.architecture.width(), self.outputs, pre, device)),
            None => Model::SmallCnn(SmallCnn::new(self.architecture.width(), self.outputs, pre, device)),
        }))
    }
}

/// Builds a module whose initial weights depend on `seed` only.
///
/// burn's CPU backend draws initial weights from one process-wide generator: hold it from seeding
/// to the last draw, so that modules built concurrently (parallel tests, a benchmark) still get
/// their seed's weights.
pub fn init_seeded<M: Module>(device: &Device, seed: u64, build: impl FnOnce() -> M) -> M {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    let module = build();
    // Parameters are initialised lazily, on first use: draw them now, under the lock.
    module.visit(&mut Materialize);
    module
}

/// Forces burn's lazily initialised parameters to draw their values.
struct Materialize;

impl burn::module::ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// A model built by drmguard. Its parameter names are the backbone's own (`conv1.weight`, …)
/// when saved without enum variant names (see [`crate::model_file`]).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one model per run: boxing would buy nothing
pub enum Model {
    Resnet(ResNet),
    SmallCnn(SmallCnn),
    Onnx(OnnxRegressor),
}

/// How a forward pass applies each BatchNorm of F: `bn.forward(x)` normally; a defense may
/// perturb or mask it (ANP). Called in the order of [`Model::batch_norms`].
pub type BnHook<'a> = &'a mut dyn FnMut(&BatchNorm, Tensor<4>) -> Tensor<4>;

/// The plain BatchNorm.
fn plain(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    bn.forward(x)
}

impl Model {
    fn fc(&self) -> &Linear {
        match self {
            Model::Resnet(m) => &m.fc,
            Model::SmallCnn(m) => &m.fc,
            Model::Onnx(m) => &m.fc,
        }
    }

    /// F with every BatchNorm applied through `bn` (an ONNX graph has no BatchNorm of its own:
    /// the exporter folds them into the convolutions).
    pub fn features_with(&self, x: Tensor<4>, bn: BnHook) -> Tensor<2> {
        match self {
            Model::Resnet(m) => m.features_with(x, bn),
            Model::SmallCnn(m) => m.features_with(x, bn),
            Model::Onnx(m) => m.features(x),
        }
    }

    /// An inner convolutional layer's activations `[n, c, h, w]` (ResNet: `layer3`'s output; the
    /// small CNN: its second block's), where neuron-level defenses (ABS) look.
    pub fn inner(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Model::Resnet(m) => m.inner_with(x, &mut plain),
            Model::SmallCnn(m) => m.inner_with(x, &mut plain),
            Model::Onnx(m) => m.inner(x),
        }
    }

    /// From [`Self::inner`]'s activations to the penultimate features.
    pub fn tail(&self, h: Tensor<4>) -> Tensor<2> {
        match self {
            Model::Resnet(m) => m.tail_with(h, &mut plain),
            Model::SmallCnn(m) => m.tail_with(h, &mut plain),
            Model::Onnx(m) => m.tail(h),
        }
    }

    /// The outputs from [`Self::inner`]'s activations.
    pub fn forward_inner(&self, h: Tensor<4>) -> Tensor<2> {
        self.head(self.tail(h))
    }

    /// Every BatchNorm of F, in forward order (the order [`BnHook`]s see them).
    pub fn batch_norms(&self) -> Vec<&BatchNorm> {
        match self {
            Model::Resnet(m) => m.batch_norms(),
            Model::SmallCnn(m) => m.batch_norms(),
            Model::Onnx(_) => Vec::new(),
        }
    }

    /// The model with each BatchNorm replaced by `f(index, bn)`, indices as in [`Self::batch_norms`].
    pub fn map_batch_norms(self, mut f: impl FnMut(usize, BatchNorm) -> BatchNorm) -> Model {
        let mut index = 0;
        let mut visit = |bn: BatchNorm| {
            let bn = f(index, bn);
            index += 1;
            bn
        };
        match self {
            Model::Resnet(m) => Model::Resnet(m.map_batch_norms(&mut visit)),
            Model::SmallCnn(m) => Model::SmallCnn(m.map_batch_norms(&mut visit)),
            Model::Onnx(m) => Model::Onnx(m),
        }
    }

    /// The model with its head H replaced by `f(H)`.
    pub fn map_head(self, f: impl FnOnce(Linear) -> Linear) -> Model {
        match self {
            Model::Resnet(m) => Model::Resnet(ResNet { fc: f(m.fc), ..m }),
            Model::SmallCnn(m) => Model::SmallCnn(SmallCnn { fc: f(m.fc), ..m }),
            Model::Onnx(m) => Model::Onnx(OnnxRegressor { fc: f(m.fc), ..m }),
        }
    }
}

impl Regressor for Model {
    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        self.features_with(x, &mut plain)
    }

    fn head(&self, z: Tensor<2>) -> Tensor<2> {
        self.fc().forward(z)
    }

    fn head_weight(&self) -> Tensor<2> {
        // burn stores a linear layer's weight as [in, out]; the rows w_j are its columns.
        self.fc().weight.val().transpose()
    }
}
