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

use super::{BnHook, Normalization};

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

    /// The block with every BatchNorm applied through `bn`, in the order of [`Self::batch_norms`].
    fn forward_with(&self, x: Tensor<4>, bn: BnHook) -> Tensor<4> {
        let out = relu(bn(&self.bn1, self.conv1.forward(x.clone())));
        let out = bn(&self.bn2, self.conv2.forward(out));
        let identity = match &self.downsample {
            Some(d) => bn(&d.bn, d.conv.forward(x)),
            None => x,
        };
        relu(out + identity)
    }

    fn batch_norms(&self) -> Vec<&BatchNorm> {
        let mut all = vec![&self.bn1, &self.bn2];
        all.extend(self.downsample.as_ref().map(|d| &d.bn));
        all
    }

    fn map_batch_norms(self, f: &mut dyn FnMut(BatchNorm) -> BatchNorm) -> Self {
        let bn1 = f(self.bn1);
        let bn2 = f(self.bn2);
        let downsample = self.downsample.map(|d| Downsample { conv: d.conv, bn: f(d.bn) });
        BasicBlock { conv1: self.conv1, bn1, conv2: self.conv2, bn2, downsample }
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

    /// F: images `[n, 3, H, W]` in [0, 1] to pooled features `[n, 8·width]`, with every BatchNorm
    /// applied through `bn` (in the order of [`Self::batch_norms`]).
    pub fn features_with(&self, x: Tensor<4>, bn: BnHook) -> Tensor<2> {
        let h = self.inner_with(x, bn);
        self.tail_with(h, bn)
    }

    /// Images to the output of `layer3`, `[n, 4·width, H/16, W/16]`.
    pub fn inner_with(&self, x: Tensor<4>, bn: BnHook) -> Tensor<4> {
        let x = self.norm.apply(x);
        let mut x = self.maxpool.forward(relu(bn(&self.bn1, self.conv1.forward(x))));
        for block in self.layer1.iter().chain(&self.layer2).chain(&self.layer3) {
            x = block.forward_with(x, bn);
        }
        x
    }

    /// `layer3`'s output to the pooled features: `layer4` and global average pooling.
    pub fn tail_with(&self, mut x: Tensor<4>, bn: BnHook) -> Tensor<2> {
        for block in &self.layer4 {
            x = block.forward_with(x, bn);
        }
        global_avg_pool(x)
    }

    /// Every BatchNorm of F in forward order: the stem's, then each block's `bn1`, `bn2` and
    /// shortcut.
    pub fn batch_norms(&self) -> Vec<&BatchNorm> {
        let mut all = vec![&self.bn1];
        for block in self.layer1.iter().chain(&self.layer2).chain(&self.layer3).chain(&self.layer4) {
            all.extend(block.batch_norms());
        }
        all
    }

    /// The model with every BatchNorm replaced by `f(bn)`, visited in the order of
    /// [`Self::batch_norms`].
    pub fn map_batch_norms(self, f: &mut dyn FnMut(BatchNorm) -> BatchNorm) -> Self {
        let bn1 = f(self.bn1);
        let mut stage = |blocks: Vec<BasicBlock>| blocks.into_iter().map(|b| b.map_batch_norms(f)).collect::<Vec<_>>();
        let (layer1, layer2, layer3, layer4) = (stage(self.layer1), stage(self.layer2), stage(self.layer3), stage(self.layer4));
        ResNet { conv1: self.conv1, bn1, maxpool: self.maxpool, layer1, layer2, layer3, layer4, fc: self.fc, norm: self.norm }
    }
}

/// Mean over the spatial axes: `[n, c, h, w]` to `[n, c]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}
