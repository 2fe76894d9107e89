//! A regressor from an ONNX file, run by `drmguard-onnx`: F is the graph up to the input of its
//! last linear layer, H that layer as a burn [`Linear`] (so that it can be folded, pruned and
//! fine-tuned like the native models' `fc`).
//!
//! Neuron-level defenses (ABS) look at the last four-dimensional value with a spatial extent that
//! separates the graph (every later node depends on the input only through it: for a ResNet, the
//! last block's output); a graph without one is stimulated at its (normalised) input.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use drmguard_onnx::{OnnxModel, Value};

use super::Preprocess;
use crate::error::{Error, Result};

#[derive(Module, Debug)]
pub struct OnnxRegressor {
    /// The whole graph (its own copy of the head stays in it, unused).
    pub net: OnnxModel,
    pub fc: Linear,
    #[module(skip)]
    pub norm: Preprocess,
    #[module(skip)]
    pub layers: OnnxLayers,
}

/// Where F ends and where neuron-level defenses look, by value name.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxLayers {
    pub features: String,
    pub feature_width: usize,
    /// The last 4-D value that separates the graph, if any.
    pub inner: Option<String>,
}

fn onnx_err(path: &Path) -> impl Fn(drmguard_onnx::Error) -> Error + '_ {
    move |e| Error::Weights { path: path.to_path_buf(), message: e.to_string() }
}

impl OnnxRegressor {
    /// Loads the graph and checks it on a dry run of two `input_size` images: the head of the
    /// graph output `output` (the only one when `None`) must be one linear layer with `outputs`
    /// outputs, or an affine function of the value `features` when the card names one, and the
    /// batch axis must be free.
    pub fn load(
        path: &Path,
        output: Option<&str>,
        features: Option<&str>,
        input_size: u32,
        outputs: usize,
        norm: Preprocess,
        device: &Device,
    ) -> Result<Self> {
        let err = onnx_err(path);
        let fail = |message: String| Error::Weights { path: path.to_path_buf(), message };
        let net = OnnxModel::load(path, device).map_err(&err)?;
        let declared = net.input().map(|(_, d)| d.to_vec()).unwrap_or_default();
        let s = input_size as usize;
        for (axis, (want, have)) in [None, Some(3), Some(s), Some(s)].iter().zip(&declared).enumerate() {
            if let (Some(w), Some(h)) = (want, have) {
                if w != h {
                    return Err(fail(format!("the graph's input has {h} on axis {axis}, the card says {w} (input [n, 3, {s}, {s}])")));
                }
            }
        }
        let output_index = graph_output(&net, output).map_err(fail)?;
        let head = match features {
            None => net.linear_head(output_index).map_err(&err)?,
            Some(name) => {
                // Features of a few images, to check that the rest of the graph is affine.
                let x = norm.apply(probe_images(4, s, device));
                let z = net.value_at(x, name).and_then(|v| v.f2(name)).map_err(|e| fail(format!("the features {name}: {e}")))?;
                net.probed_head(name, output_index, z).map_err(&err)?
            }
        };
        let [feature_width, d] = head.weight.dims();
        if d != outputs {
            return Err(fail(format!("the graph has {d} outputs, expected {outputs}")));
        }
        let mut fc = LinearConfig::new(feature_width, d).with_bias(head.bias.is_some()).init(device);
        fc.weight = Param::from_tensor(head.weight);
        fc.bias = head.bias.map(Param::from_tensor);

        // A dry run finds shape errors (a batch size baked into a Reshape, a wrong input size)
        // here rather than in the middle of a scan.
        let x = norm.apply(Tensor::<4>::zeros([2, 3, s, s], device));
        let shapes = net.shapes(x).map_err(|e| {
            fail(format!("the graph does not run on a batch of two {s}×{s} images ({e}); export it with a dynamic batch axis"))
        })?;
        let dims_of = |name: &str| shapes.iter().find(|(n, _)| n == name).map(|(_, d)| d.clone());
        if dims_of(&head.features) != Some(vec![2, feature_width]) {
            return Err(fail(format!("the features {} have shape {:?}, expected [n, {feature_width}]", head.features, dims_of(&head.features))));
        }
        let feature_step = shapes.iter().position(|(n, _)| *n == head.features).unwrap_or(shapes.len());
        // The last separating 4-D value, preferring one with a spatial extent (after global
        // pooling every channel is one number, and ABS would stimulate whole channels). A
        // Transpose's output is skipped: its axis 1 is no longer the channels (MTCNN permutes
        // its last feature map before flattening).
        let cuts: Vec<&(String, Vec<usize>)> = shapes[..feature_step]
            .iter()
            .rev()
            .filter(|(n, d)| d.len() == 4 && net.is_cut(n) && net.producer_op(n) != Some("Transpose"))
            .collect();
        let inner = cuts.iter().find(|(_, d)| d[2] * d[3] > 1).or(cuts.first()).map(|(n, _)| n.clone());
        let layers = OnnxLayers { features: head.features, feature_width, inner };
        Ok(OnnxRegressor { net, fc, norm, layers })
    }

    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let h = self.inner(x);
        self.tail(h)
    }

    /// The value neuron-level defenses stimulate (see the module's documentation).
    pub fn inner(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.norm.apply(x);
        match &self.layers.inner {
            Some(name) => expect_shape_checked(self.net.value_at(x, name).and_then(|v| v.f4(name))),
            None => x,
        }
    }

    /// From [`Self::inner`]'s value to the features.
    pub fn tail(&self, h: Tensor<4>) -> Tensor<2> {
        let features = &self.layers.features;
        let z = match &self.layers.inner {
            Some(name) => self.net.resume(name, Value::F4(h), features),
            None => self.net.value_at(h, features),
        };
        expect_shape_checked(z.and_then(|v| v.f2(features)))
    }
}

/// `n` fixed pseudo-random RGB images in [0, 1] (a hash of the pixel index: no seed to carry).
fn probe_images(n: usize, side: usize, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..n * 3 * side * side).map(|i| ((i as u64).wrapping_mul(2654435761) % 1009) as f32 / 1008.0).collect();
    Tensor::from_data(burn::tensor::TensorData::new(values, [n, 3, side, side]), device)
}

/// The index of the graph output named `wanted`, or of the only output.
fn graph_output(net: &OnnxModel, wanted: Option<&str>) -> std::result::Result<usize, String> {
    let names = net.output_names();
    match wanted {
        Some(name) => names.iter().position(|n| *n == name).ok_or_else(|| {
            format!("the graph has no output named {name:?} (its outputs: {})", names.join(", "))
        }),
        None if names.len() == 1 => Ok(0),
        None => Err(format!(
            "the graph has {} outputs ({}): name the regression's with graph_output in the card's [output] section",
            names.len(),
            names.join(", ")
        )),
    }
}

/// The graph's shapes were checked on a dry run when it was loaded, and the operators run on any
/// batch size, so a failure here is a bug in drmguard-onnx rather than bad input.
fn expect_shape_checked<T>(r: drmguard_onnx::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("an ONNX graph that passed its dry run failed: {e}"))
}
