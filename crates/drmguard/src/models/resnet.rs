//! ResNet-18, -34 and -50 in torchvision's layout and parameter names (`conv1`, `bn1`,
//! `layer1.0.conv1`, …, `fc`), split as f = H ∘ F: F runs up to the globally pooled features, H is
//! the linear `fc`. `width` scales every stage (64 is torchvision's; 16 is a fast CPU variant).
//! ResNet-50's bottlenecks put the stride on their 3×3 convolution, as torchvision does (v1.5).
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

use super::{BnHook, Preprocess};

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

/// ResNet-50's block: 1×1 down to `mid` channels, 3×3 (strided), 1×1 up to `4·mid`.
#[derive(Module, Debug)]
pub struct Bottleneck {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub conv3: Conv2d,
    pub bn3: BatchNorm,
    pub downsample: Option<Downsample>,
}

/// Output channels of a bottleneck per `mid` channel.
const EXPANSION: usize = 4;

impl Bottleneck {
    fn new(cin: usize, mid: usize, stride: usize, device: &Device) -> Self {
        let cout = EXPANSION * mid;
        let downsample = (stride != 1 || cin != cout).then(|| Downsample {
            conv: conv(cin, cout, 1, stride, device),
            bn: BatchNormConfig::new(cout).init(device),
        });
        Bottleneck {
            conv1: conv(cin, mid, 1, 1, device),
            bn1: BatchNormConfig::new(mid).init(device),
            conv2: conv(mid, mid, 3, stride, device),
            bn2: BatchNormConfig::new(mid).init(device),
            conv3: conv(mid, cout, 1, 1, device),
            bn3: BatchNormConfig::new(cout).init(device),
            downsample,
        }
    }

    fn forward_with(&self, x: Tensor<4>, bn: BnHook) -> Tensor<4> {
        let out = relu(bn(&self.bn1, self.conv1.forward(x.clone())));
        let out = relu(bn(&self.bn2, self.conv2.forward(out)));
        let out = bn(&self.bn3, self.conv3.forward(out));
        let identity = match &self.downsample {
            Some(d) => bn(&d.bn, d.conv.forward(x)),
            None => x,
        };
        relu(out + identity)
    }

    fn batch_norms(&self) -> Vec<&BatchNorm> {
        let mut all = vec![&self.bn1, &self.bn2, &self.bn3];
        all.extend(self.downsample.as_ref().map(|d| &d.bn));
        all
    }

    fn map_batch_norms(self, f: &mut dyn FnMut(BatchNorm) -> BatchNorm) -> Self {
        let bn1 = f(self.bn1);
        let bn2 = f(self.bn2);
        let bn3 = f(self.bn3);
        let downsample = self.downsample.map(|d| Downsample { conv: d.conv, bn: f(d.bn) });
        Bottleneck { conv1: self.conv1, bn1, conv2: self.conv2, bn2, conv3: self.conv3, bn3, downsample }
    }
}

/// A residual block. Saved without its variant name, so that parameter paths are torchvision's.
#[derive(Module, Debug)]
pub enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

impl Block {
    fn forward_with(&self, x: Tensor<4>, bn: BnHook) -> Tensor<4> {
        match self {
            Block::Basic(b) => b.forward_with(x, bn),
            Block::Bottleneck(b) => b.forward_with(x, bn),
        }
    }

    fn batch_norms(&self) -> Vec<&BatchNorm> {
        match self {
            Block::Basic(b) => b.batch_norms(),
            Block::Bottleneck(b) => b.batch_norms(),
        }
    }

    fn map_batch_norms(self, f: &mut dyn FnMut(BatchNorm) -> BatchNorm) -> Self {
        match self {
            Block::Basic(b) => Block::Basic(b.map_batch_norms(f)),
            Block::Bottleneck(b) => Block::Bottleneck(b.map_batch_norms(f)),
        }
    }
}

/// Which blocks a ResNet stacks, and how many per stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Two basic blocks per stage.
    R18,
    /// 3, 4, 6, 3 basic blocks.
    R34,
    /// 3, 4, 6, 3 bottlenecks.
    R50,
}

impl Depth {
    pub fn blocks_per_stage(self) -> [usize; 4] {
        match self {
            Depth::R18 => [2, 2, 2, 2],
            Depth::R34 | Depth::R50 => [3, 4, 6, 3],
        }
    }

    pub fn bottleneck(self) -> bool {
        self == Depth::R50
    }

    /// Width of the pooled features for a stem of `width` channels.
    pub fn feature_width(self, width: usize) -> usize {
        if self.bottleneck() { 8 * width * EXPANSION } else { 8 * width }
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub maxpool: MaxPool2d,
    pub layer1: Vec<Block>,
    pub layer2: Vec<Block>,
    pub layer3: Vec<Block>,
    pub layer4: Vec<Block>,
    pub fc: Linear,
    #[module(skip)]
    pub norm: Preprocess,
}

impl ResNet {
    /// A ResNet of `depth` whose stem has `width` channels (torchvision: 64).
    pub fn new(depth: Depth, width: usize, outputs: usize, norm: Preprocess, device: &Device) -> Self {
        let mut cin = width;
        let mut stage = |mid: usize, stride: usize, blocks: usize| {
            (0..blocks)
                .map(|i| {
                    let stride = if i == 0 { stride } else { 1 };
                    let block = if depth.bottleneck() {
                        Block::Bottleneck(Bottleneck::new(cin, mid, stride, device))
                    } else {
                        Block::Basic(BasicBlock::new(cin, mid, stride, device))
                    };
                    cin = if depth.bottleneck() { EXPANSION * mid } else { mid };
                    block
                })
                .collect::<Vec<_>>()
        };
        let [b1, b2, b3, b4] = depth.blocks_per_stage();
        let (layer1, layer2, layer3, layer4) =
            (stage(width, 1, b1), stage(2 * width, 2, b2), stage(4 * width, 2, b3), stage(8 * width, 2, b4));
        ResNet {
            conv1: conv(3, width, 7, 2, device),
            bn1: BatchNormConfig::new(width).init(device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1,
            layer2,
            layer3,
            layer4,
            fc: LinearConfig::new(depth.feature_width(width), outputs).init(device),
            norm,
        }
    }

    /// F: images `[n, 3, H, W]` in [0, 1] to pooled features (`[n, 8·width]`, ResNet-50
    /// `[n, 32·width]`), with every BatchNorm
    /// applied through `bn` (in the order of [`Self::batch_norms`]).
    pub fn features_with(&self, x: Tensor<4>, bn: BnHook) -> Tensor<2> {
        let h = self.inner_with(x, bn);
        self.tail_with(h, bn)
    }

    /// Images to the output of `layer3`, `[n, c, H/16, W/16]`.
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
        let mut stage = |blocks: Vec<Block>| blocks.into_iter().map(|b| b.map_batch_norms(f)).collect::<Vec<_>>();
        let (layer1, layer2, layer3, layer4) = (stage(self.layer1), stage(self.layer2), stage(self.layer3), stage(self.layer4));
        ResNet { conv1: self.conv1, bn1, maxpool: self.maxpool, layer1, layer2, layer3, layer4, fc: self.fc, norm: self.norm }
    }
}

/// Mean over the spatial axes: `[n, c, h, w]` to `[n, c]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}
