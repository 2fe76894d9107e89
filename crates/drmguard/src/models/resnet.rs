//! ResNet-18 in torchvision's layout and parameter names (`conv1`, `bn1`, `layer1.0.conv1`, …,
//! `fc`), split as f = H ∘ F: F runs up to the globally pooled features, H is the linear `fc`.
//! `width` scales every stage (64 is torchvision's ResNet-18; 16 is a fast CPU variant).
//!
//! In memory a block's shortcut is `downsample.conv` / `downsample.bn` and BatchNorm holds
//! `gamma`/`beta`; [`crate::model_file`] writes torchvision's `downsample.0` / `downsample.1` and
//! `weight`/`bias` on disk, so the files are torchvision state dicts.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::Normalization;

fn conv(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .init(device)
}

#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

#[derive(Module, Debug)]
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub downsample: Option<Downsample>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
        let downsample = (stride != 1 || cin != cout).then(|| Downsample {
            conv: conv(cin, cout, 1, stride, device),
            bn: BatchNormConfig::new(cout).init(device),
        });
        BasicBlock {
            conv1: conv(cin, cout, 3, stride, device),
            bn1: BatchNormConfig::new(cout).init(device),
            conv2: conv(cout, cout, 3, 1, device),
            bn2: BatchNormConfig::new(cout).init(device),
            downsample,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.bn.forward(d.conv.forward(x.clone())),
            None => x.clone(),
        };
        let out = relu(self.bn1.forward(self.conv1.forward(x)));
        let out = self.bn2.forward(self.conv2.forward(out));
        relu(out + identity)
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub maxpool: MaxPool2d,
    pub layer1: Vec<BasicBlock>,
    pub layer2: Vec<BasicBlock>,
    pub layer3: Vec<BasicBlock>,
    pub layer4: Vec<BasicBlock>,
    pub fc: Linear,
    #[module(skip)]
    pub norm: Normalization,
}

impl ResNet {
    /// ResNet-18: two basic blocks per stage.
    pub fn resnet18(width: usize, outputs: usize, norm: Normalization, device: &Device) -> Self {
        let ch = [width, 2 * width, 4 * width, 8 * width];
        let stage = |cin: usize, cout: usize, stride: usize| {
            vec![BasicBlock::new(cin, cout, stride, device), BasicBlock::new(cout, cout, 1, device)]
        };
        ResNet {
            conv1: conv(3, width, 7, 2, device),
            bn1: BatchNormConfig::new(width).init(device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1: stage(ch[0], ch[0], 1),
            layer2: stage(ch[0], ch[1], 2),
            layer3: stage(ch[1], ch[2], 2),
            layer4: stage(ch[2], ch[3], 2),
            fc: LinearConfig::new(ch[3], outputs).init(device),
            norm,
        }
    }

    /// F: images `[n, 3, H, W]` in [0, 1] to pooled features `[n, 8·width]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.norm.apply(x);
        let mut x = self.maxpool.forward(relu(self.bn1.forward(self.conv1.forward(x))));
        for block in self.layer1.iter().chain(&self.layer2).chain(&self.layer3).chain(&self.layer4) {
            x = block.forward(x);
        }
        global_avg_pool(x)
    }
}

/// Mean over the spatial axes: `[n, c, h, w]` to `[n, c]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}
