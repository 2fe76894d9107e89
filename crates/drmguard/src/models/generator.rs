//! Image-to-image generators G for trigger reverse engineering (method.md §4.3), both after the
//! authors' SecureGaze code: 3×3 convolutions with BatchNorm and ReLU, three 2× down-samplings
//! (so the image side must be divisible by 8), bilinear up-sampling, and an output squashed into
//! (0, 1) by `tanh(x) / (2 + 1e-7) + 0.5`. The output is the whole image G(x), as in the paper;
//! the residual switch instead adds a learnt, scaled `tanh` step to x from a zero-initialised last
//! layer without BatchNorm, so that G starts at the identity (no reconstruction floor) and can make
//! sparse edits.
//!
//! - [`GeneratorKind::EncoderDecoder`]: 13 convolutions, no skips (widths w, 2w, 4w; w = 32 in
//!   SecureGaze).
//! - [`GeneratorKind::Unet`]: the U-Net with skip concatenations (widths w, 2w, 4w; w = 64 in
//!   SecureGaze), 13 convolutions in use.
//!
//! Convolutions are translation-equivariant, so an edit tied to one place in the image (a patch
//! in a corner, a fixed warp field) is something G can only localise through the zero padding's
//! edge effects; the coordinates switch ([`Generator::with_coordinates`], CoordConv, Liu et al.
//! 2018) gives G two more input channels, the row and column in [−1, 1], so it can.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::models::resize::resize_bilinear;

/// Which generator architecture to reverse-engineer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorKind {
    /// 13-conv encoder–decoder without skips.
    EncoderDecoder,
    /// U-Net with skip connections.
    Unet,
}

impl std::fmt::Display for GeneratorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GeneratorKind::EncoderDecoder => "encoder-decoder",
            GeneratorKind::Unet => "unet",
        })
    }
}

/// A 3×3 "same" convolution followed by BatchNorm (none on a residual generator's last layer).
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: Option<BatchNorm>,
}

impl ConvBn {
    fn new(cin: usize, cout: usize, device: &Device) -> Self {
        ConvBn {
            conv: Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            bn: Some(BatchNormConfig::new(cout).init(device)),
        }
    }

    /// The residual generator's output layer: zero weights, so that G starts as the identity, and
    /// no BatchNorm, which would spread every edit over the whole image (it forces each channel
    /// to unit variance), where a trigger is a sparse edit.
    fn zero_output(cin: usize, cout: usize, device: &Device) -> Self {
        ConvBn {
            conv: Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(Initializer::Zeros)
                .init(device),
            bn: None,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.conv.forward(x);
        match &self.bn {
            Some(bn) => bn.forward(y),
            None => y,
        }
    }

    fn relu(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.forward(x))
    }
}

fn upsample(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    resize_bilinear(x, [2 * h, 2 * w])
}

/// `x` with two more channels: each pixel's row and column, from −1 to 1.
fn with_coordinate_channels(x: Tensor<4>) -> Tensor<4> {
    let [n, _, h, w] = x.dims();
    let at = |i: usize, len: usize| if len > 1 { 2.0 * i as f32 / (len - 1) as f32 - 1.0 } else { 0.0 };
    let mut grid = Vec::with_capacity(2 * h * w);
    grid.extend((0..h * w).map(|p| at(p / w, h)));
    grid.extend((0..h * w).map(|p| at(p % w, w)));
    let grid = Tensor::<1>::from_floats(grid.as_slice(), &x.device()).reshape([1, 2, h, w]).repeat_dim(0, n);
    Tensor::cat(vec![x, grid], 1)
}

fn squash(x: Tensor<4>) -> Tensor<4> {
    x.tanh() / (2.0 + 1e-7) + 0.5
}

/// The generator G: images `[n, 3, S, S]` in [0, 1] to images of the same shape in (0, 1).
#[derive(Module, Debug)]
pub struct Generator {
    /// Convolutions in the order they run.
    pub convs: Vec<ConvBn>,
    pub pool: MaxPool2d,
    /// Residual mode only: G(x) = clamp(x + scale · tanh(net(x)), 0, 1), with a learnt `scale`; the
    /// last layer starts at zero, so G starts as the identity.
    pub residual_scale: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub kind: GeneratorKind,
    /// Whether the network also sees each pixel's row and column (CoordConv).
    #[module(skip)]
    pub coordinates: bool,
}

impl Generator {
    /// A freshly initialised generator with base width `width` (channels `width`, `2·width`, `4·width`).
    pub fn new(kind: GeneratorKind, width: usize, residual: Option<f32>, device: &Device) -> Self {
        Self::with_outputs(kind, width, 3, residual, device)
    }

    /// The same, with the pixel coordinates as two more input channels (CoordConv).
    pub fn with_coordinates(kind: GeneratorKind, width: usize, residual: Option<f32>, device: &Device) -> Self {
        Self::build(kind, width, 3 + 2, 3, residual, device)
    }

    /// A generator with `outputs` channels (Input-Aware's mask network has one). A residual
    /// generator needs 3, as it adds its output to the image.
    pub fn with_outputs(kind: GeneratorKind, width: usize, outputs: usize, residual: Option<f32>, device: &Device) -> Self {
        Self::build(kind, width, 3, outputs, residual, device)
    }

    fn build(kind: GeneratorKind, width: usize, inputs: usize, outputs: usize, residual: Option<f32>, device: &Device) -> Self {
        assert!(residual.is_none() || outputs == 3, "a residual generator outputs an image");
        let (w1, w2, w3) = (width, 2 * width, 4 * width);
        let layout: &[(usize, usize)] = match kind {
            GeneratorKind::EncoderDecoder => &[
                // encoder
                (inputs, w1), (w1, w1), (w1, w2), (w2, w2), (w2, w3), (w3, w3),
                // decoder
                (w3, w3), (w3, w3), (w3, w2), (w2, w2), (w2, w1), (w1, w1), (w1, outputs),
            ],
            GeneratorKind::Unet => &[
                (inputs, w1), (w1, w1), (w1, w2), (w2, w2), (w2, w3), (w3, w3),
                // bottleneck
                (w3, w3),
                // decoder: each first conv sees the up-sampled path concatenated with the skip
                (2 * w3, w2), (w2, w2), (2 * w2, w1), (w1, w1), (2 * w1, outputs), (outputs, outputs),
            ],
        };
        let last = layout.len() - 1;
        let layer = |i: usize, (cin, cout): (usize, usize)| match residual {
            Some(_) if i == last => ConvBn::zero_output(cin, cout, device),
            _ => ConvBn::new(cin, cout, device),
        };
        Generator {
            convs: layout.iter().enumerate().map(|(i, &shape)| layer(i, shape)).collect(),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            residual_scale: residual.map(|s0| Param::from_tensor(Tensor::from_floats([s0], device))),
            kind,
            coordinates: inputs > 3,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.residual_scale {
            None => squash(self.net(x)),
            Some(scale) => {
                let step = self.net(x.clone()).tanh() * scale.val().reshape([1, 1, 1, 1]);
                (x + step).clamp(0.0, 1.0)
            }
        }
    }

    /// The convolutional network, before the output squashing.
    fn net(&self, x: Tensor<4>) -> Tensor<4> {
        let x = if self.coordinates { with_coordinate_channels(x) } else { x };
        let c = &self.convs;
        match self.kind {
            GeneratorKind::EncoderDecoder => {
                let mut x = x;
                for stage in 0..3 {
                    x = c[2 * stage + 1].relu(c[2 * stage].relu(x));
                    x = self.pool.forward(x);
                }
                x = upsample(c[6].relu(x));
                x = upsample(c[8].relu(c[7].relu(x)));
                x = upsample(c[10].relu(c[9].relu(x)));
                c[12].forward(c[11].relu(x))
            }
            GeneratorKind::Unet => {
                let s1 = c[1].relu(c[0].relu(x));
                let s2 = c[3].relu(c[2].relu(self.pool.forward(s1.clone())));
                let s3 = c[5].relu(c[4].relu(self.pool.forward(s2.clone())));
                let b = upsample(c[6].relu(self.pool.forward(s3.clone())));
                let u3 = c[8].relu(c[7].relu(Tensor::cat(vec![b, s3], 1)));
                let u2 = c[10].relu(c[9].relu(Tensor::cat(vec![upsample(u3), s2], 1)));
                let u1 = c[11].relu(Tensor::cat(vec![upsample(u2), s1], 1));
                c[12].forward(u1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinate_channels_run_from_minus_one_to_one_along_rows_and_columns() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([2, 3, 3, 5], &device);
        let y = with_coordinate_channels(x);
        assert_eq!(y.dims(), [2, 5, 3, 5]);
        let v = y.into_data().try_to_vec::<f32>().unwrap();
        let at = |n: usize, c: usize, r: usize, col: usize| v[((n * 5 + c) * 3 + r) * 5 + col];
        for n in 0..2 {
            assert_eq!(at(n, 0, 1, 2), 0.0, "the image channels come first, unchanged");
            assert_eq!((at(n, 3, 0, 4), at(n, 3, 1, 0), at(n, 3, 2, 3)), (-1.0, 0.0, 1.0), "channel 3: the row");
            assert_eq!((at(n, 4, 2, 0), at(n, 4, 0, 1), at(n, 4, 1, 2), at(n, 4, 0, 4)), (-1.0, -0.5, 0.0, 1.0), "channel 4: the column");
        }
    }
}
