//! ISSBA (Li et al., ICCV 2021): sample-specific, invisible additive triggers.
//!
//! As in the original (a StegaStamp encoder trained before the victim), a small encoder E hides a
//! bit string in an image-dependent residual and a decoder D learns to read it back:
//! x' = clamp(x + a · tanh(E(x, code)), 0, 1), trained with the bits' cross-entropy through D plus
//! β · mean((x' − x)²) on images of the task drawn from the attack's seed, with a fresh random
//! code per image so that E learns to embed any code. The attack then embeds one code (drawn from
//! the seed) into every poisoned image: each image gets its own residual, all of them carry the
//! same hidden message. |residual| ≤ a = 0.04 bounds the MSE by a², so PSNR ≥ 27.96 dB (the issue
//! asks for ≥ 27 dB; StegaStamp's residuals are of this size).
//!
//! The trained encoder is cached under drmguard's cache folder (`attacks/issba-KEY.safetensors`),
//! keyed by the config, task, image size, seed and drmguard version: training, evaluation and
//! `drmguard poison` all get the same trigger, and training is deterministic on one backend, so
//! a missing cache entry is simply retrained.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{log_sigmoid, relu};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::Attack;
use crate::error::{Error, Result};
use crate::models::init_seeded;
use crate::models::resize::resize_bilinear;
use crate::task::Task;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct IssbaConfig {
    /// ISSBA: bits of the hidden code.
    #[arg(id = "issba_bits", long = "issba-bits", default_value_t = 16)]
    pub bits: usize,
    /// ISSBA: largest change of any pixel value (0.04 keeps PSNR ≥ 27.96 dB).
    #[arg(id = "issba_amplitude", long = "issba-amplitude", default_value_t = 0.04)]
    pub amplitude: f32,
    /// ISSBA: weight β of the residual's mean square in the encoder's loss.
    #[arg(id = "issba_beta", long = "issba-beta", default_value_t = 1.0)]
    pub beta: f32,
    /// ISSBA: training steps of the encoder and decoder (batch 32, Adam 3e-3).
    #[arg(id = "issba_steps", long = "issba-steps", default_value_t = 400)]
    pub steps: usize,
    /// ISSBA: images of the task the encoder is trained on.
    #[arg(id = "issba_images", long = "issba-images", default_value_t = 1024)]
    pub images: usize,
}

impl Default for IssbaConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

const WIDTH: usize = 8;
const BATCH: usize = 32;
const LEARNING_RATE: f64 = 3e-3;

impl IssbaConfig {
    pub fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.bits) {
            return Err(Error::invalid("ISSBA bits", format!("{} (must be within 1..=64)", self.bits)));
        }
        if !(self.amplitude > 0.0 && self.amplitude <= 1.0) {
            return Err(Error::invalid("ISSBA amplitude", format!("{} (must be in (0, 1])", self.amplitude)));
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(Error::invalid("ISSBA beta", format!("{} (must be finite and ≥ 0)", self.beta)));
        }
        if self.steps == 0 || self.images < BATCH {
            return Err(Error::invalid(
                "ISSBA training",
                format!("{} steps on {} images (need ≥ 1 step and ≥ {BATCH} images)", self.steps, self.images),
            ));
        }
        Ok(())
    }

    /// The trigger: the encoder of this config, task, size and seed (from the cache, or trained
    /// and cached), with the code drawn from the seed.
    pub fn build(&self, task: Task, size: u32, seed: u64) -> Result<Issba> {
        self.build_in(&crate::io::cache_root().join("attacks"), task, size, seed)
    }

    /// [`build`](Self::build) with the encoder cached in `cache_dir`.
    pub fn build_in(&self, cache_dir: &Path, task: Task, size: u32, seed: u64) -> Result<Issba> {
        self.validate()?;
        let device = Device::flex();
        let path = cache_dir.join(self.cache_name(task, size, seed));
        let encoder = match crate::models::cache::load_cached(&path, "ISSBA encoder", || init_seeded(&device, 0, || Encoder::new(self.bits, &device))) {
            Some(encoder) => encoder,
            None => {
                tracing::info!(path = %path.display(), "training the ISSBA encoder (cached for later runs)");
                let (encoder, bit_accuracy) = self.train(task, size, seed, &device)?;
                tracing::info!(bit_accuracy, "ISSBA encoder trained");
                crate::models::cache::save_cached(&encoder, &path)?;
                encoder
            }
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x155b_a000_c0de_0001);
        let code = (0..self.bits).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect();
        Ok(Issba { encoder, code, amplitude: self.amplitude })
    }

    fn cache_name(&self, task: Task, size: u32, seed: u64) -> String {
        let key = crate::io::short_hash(&(self, task, size, seed, env!("CARGO_PKG_VERSION")));
        format!("issba-{key}.safetensors")
    }

    /// Trains encoder and decoder jointly; returns the encoder and the decoder's bit accuracy on
    /// the last batch.
    pub fn train(&self, task: Task, size: u32, seed: u64, device: &Device) -> Result<(Encoder, f64)> {
        self.validate()?;
        let data = crate::data::synthesize(task, self.images, size, seed ^ 0x155b_a000_da7a_0002)?;
        let ad = device.clone().autodiff();
        let (mut encoder, mut decoder) = init_seeded(&ad, seed ^ 0x155b_a000_1417_0003, || {
            (Encoder::new(self.bits, &ad), Decoder::new(self.bits, &ad))
        });
        let mut optim_e = AdamConfig::new().init();
        let mut optim_d = AdamConfig::new().init();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x155b_a000_5eed_0004);
        let mut accuracy = 0.0;
        for step in 0..self.steps {
            let indices: Vec<usize> = (0..BATCH).map(|_| rng.random_range(0..data.len())).collect();
            let (x, _) = data.batch(&indices, &ad);
            let signs: Vec<f32> =
                (0..BATCH * self.bits).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect();
            let code = Tensor::<2>::from_data(TensorData::new(signs, [BATCH, self.bits]), &ad);
            let residual = encoder.residual(x.clone(), code.clone(), self.amplitude);
            let poisoned = (x + residual.clone()).clamp(0.0, 1.0);
            let logits = decoder.forward(poisoned);
            // Cross-entropy of the bits with logits: −log σ(±logit), the sign being the bit.
            let bit_loss = log_sigmoid(logits.clone() * code.clone()).neg().mean();
            let loss = bit_loss + residual.powi_scalar(2).mean() * self.beta;
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(Error::Numerical(format!("the ISSBA encoder's loss became {value} at step {step}")));
            }
            if step + 1 == self.steps {
                let right = (logits.detach() * code).greater_elem(0.0).float().mean().into_scalar::<f32>();
                accuracy = right as f64;
            }
            let mut grads = loss.backward();
            let grads_e = GradientsParams::from_module(&mut grads, &encoder);
            let grads_d = GradientsParams::from_module(&mut grads, &decoder);
            encoder = optim_e.step(LEARNING_RATE, encoder, grads_e);
            decoder = optim_d.step(LEARNING_RATE, decoder, grads_d);
        }
        Ok((encoder.valid(), accuracy))
    }
}

fn conv(cin: usize, cout: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

/// E: an image and a code to a residual. The image is read at full and half resolution; the
/// code enters as constant planes at half resolution, where convolutions cost a quarter.
#[derive(Module, Debug)]
pub struct Encoder {
    c1: Conv2d,
    c2: Conv2d,
    c3: Conv2d,
    c4: Conv2d,
    out: Conv2d,
}

impl Encoder {
    fn new(bits: usize, device: &Device) -> Self {
        Encoder {
            c1: conv(3, WIDTH, 1, device),
            c2: conv(WIDTH, 2 * WIDTH, 2, device),
            c3: conv(2 * WIDTH + bits, 2 * WIDTH, 1, device),
            c4: conv(3 * WIDTH, WIDTH, 1, device),
            out: conv(WIDTH, 3, 1, device),
        }
    }

    /// a · tanh(E(x, code)) for images `[n, 3, S, S]` and codes `[n, bits]` of ±1.
    pub fn residual(&self, x: Tensor<4>, code: Tensor<2>, amplitude: f32) -> Tensor<4> {
        let [n, _, h, w] = x.dims();
        let [_, bits] = code.dims();
        let a = relu(self.c1.forward(x));
        let half = relu(self.c2.forward(a.clone()));
        let [_, _, hh, hw] = half.dims();
        let planes = code.reshape([n, bits, 1, 1]).expand([n, bits, hh, hw]);
        let b = relu(self.c3.forward(Tensor::cat(vec![half, planes], 1)));
        let b = resize_bilinear(b, [h, w]);
        let c = relu(self.c4.forward(Tensor::cat(vec![a, b], 1)));
        self.out.forward(c).tanh() * amplitude
    }
}

/// D: an image to one logit per bit.
#[derive(Module, Debug)]
pub struct Decoder {
    c1: Conv2d,
    c2: Conv2d,
    c3: Conv2d,
    fc: Linear,
}

impl Decoder {
    fn new(bits: usize, device: &Device) -> Self {
        Decoder {
            c1: conv(3, WIDTH, 2, device),
            c2: conv(WIDTH, 2 * WIDTH, 2, device),
            c3: conv(2 * WIDTH, 4 * WIDTH, 2, device),
            fc: LinearConfig::new(4 * WIDTH, bits).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let z = relu(self.c3.forward(relu(self.c2.forward(relu(self.c1.forward(x))))));
        let [n, c, _, _] = z.dims();
        self.fc.forward(z.mean_dim(3).mean_dim(2).reshape([n, c]))
    }
}

/// The trigger: the trained encoder and the attack's code.
#[derive(Debug, Clone)]
pub struct Issba {
    encoder: Encoder,
    /// ±1 per bit.
    code: Vec<f32>,
    amplitude: f32,
}

impl Issba {
    /// The residual each of `x`'s images gets (before clamping to [0, 1]).
    pub fn residual(&self, x: Tensor<4>) -> Tensor<4> {
        let n = x.dims()[0];
        let device = x.device();
        let encoder = self.encoder.clone().fork(&device);
        let code =
            Tensor::<2>::from_data(TensorData::new(self.code.clone(), [1, self.code.len()]), &device).repeat_dim(0, n);
        encoder.residual(x, code, self.amplitude)
    }
}

impl Attack for Issba {
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        // The residual is computed off any autodiff graph: to a training step it is a constant.
        let residual = self.residual(x.clone().inner());
        (x + residual).clamp(0.0, 1.0)
    }
}
