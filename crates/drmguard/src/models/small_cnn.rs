//! A small CNN for tests and quick experiments: three strided conv–BN–ReLU stages, global average
//! pooling, and a linear head.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::{BnHook, Preprocess};
use super::resnet::global_avg_pool;

#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

#[derive(Module, Debug)]
pub struct SmallCnn {
    pub blocks: Vec<ConvBlock>,
    pub fc: Linear,
    #[module(skip)]
    pub norm: Preprocess,
}

impl SmallCnn {
    /// Channels `width`, `2·width`, `4·width`; features have `4·width` entries.
    pub fn new(width: usize, outputs: usize, norm: Preprocess, device: &Device) -> Self {
        let channels = [3, width, 2 * width, 4 * width];
        let blocks = channels
            .windows(2)
            .map(|c| ConvBlock {
                conv: Conv2dConfig::new([c[0], c[1]], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_bias(false)
                    .init(device),
                bn: BatchNormConfig::new(c[1]).init(device),
            })
            .collect();
        SmallCnn { blocks, fc: LinearConfig::new(4 * width, outputs).init(device), norm }
    }

    /// F with every BatchNorm applied through `bn`, in block order.
    pub fn features_with(&self, x: Tensor<4>, bn: BnHook) -> Tensor<2> {
        let h = self.inner_with(x, bn);
        self.tail_with(h, bn)
    }

    /// Images to the output of every block but the last.
    pub fn inner_with(&self, x: Tensor<4>, bn: BnHook) -> Tensor<4> {
        let mut x = self.norm.apply(x);
        for b in &self.blocks[..self.blocks.len() - 1] {
            x = relu(bn(&b.bn, b.conv.forward(x)));
        }
        x
    }

    /// The last block and global average pooling.
    pub fn tail_with(&self, mut x: Tensor<4>, bn: BnHook) -> Tensor<2> {
        for b in &self.blocks[self.blocks.len() - 1..] {
            x = relu(bn(&b.bn, b.conv.forward(x)));
        }
        global_avg_pool(x)
    }

    pub fn batch_norms(&self) -> Vec<&BatchNorm> {
        self.blocks.iter().map(|b| &b.bn).collect()
    }

    pub fn map_batch_norms(self, f: &mut dyn FnMut(BatchNorm) -> BatchNorm) -> Self {
        let blocks = self.blocks.into_iter().map(|b| ConvBlock { conv: b.conv, bn: f(b.bn) }).collect();
        SmallCnn { blocks, fc: self.fc, norm: self.norm }
    }
}
