//! Batch normalisation in two fused passes.
//!
//! burn's default composes training batch norm, forward and backward, from about 25 elementwise
//! and reduction operations, each a full pass over the activations with its own allocation. Here
//! each direction is one statistics pass (channels in parallel, f64 sums) and one elementwise pass
//! (the `[batch, channel]` planes in parallel). f32 and f64 run natively, f16 and bf16 through f32.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_std::{Bytes, Shape, bf16, f16};

use crate::ops::module::{cast_from_f32, cast_to_f32};
use crate::{FlexTensor, Layout};

/// The element types the passes run on natively.
trait Real: bytemuck::Pod + burn_backend::Element + Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    const DTYPE: DType = DType::F64;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// `[batch, channels, spatial]` view of a `[batch, channels, ...]` shape.
#[derive(Clone, Copy)]
struct Planes {
    batch: usize,
    channels: usize,
    spatial: usize,
}

impl Planes {
    fn of(shape: &Shape) -> Self {
        assert!(shape.num_dims() >= 2, "batch norm requires an input rank of at least 2");
        let (batch, channels) = (shape[0], shape[1]);
        let spatial = if batch * channels == 0 { 0 } else { shape.num_elements() / (batch * channels) };
        Self { batch, channels, spatial }
    }

    /// The samples each channel's statistics run over.
    fn per_channel(&self) -> usize {
        self.batch * self.spatial
    }

    /// The planes `(n, c)` of channel `c`, as slices of `data`.
    fn channel<'a, T>(&self, data: &'a [T], c: usize) -> impl Iterator<Item = &'a [T]> {
        (0..self.batch).map(move |n| &data[(n * self.channels + c) * self.spatial..][..self.spatial])
    }
}

/// `f(c)` for every channel, channels in parallel.
fn per_channel<R: Send>(channels: usize, f: impl Fn(usize) -> R + Send + Sync) -> Vec<R> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        (0..channels).into_par_iter().map(f).collect()
    }
    #[cfg(not(feature = "rayon"))]
    {
        (0..channels).map(f).collect()
    }
}

/// `out[plane] = f(c, plane)` for every `(n, c)` plane, planes in parallel.
fn per_plane<T: Real>(p: Planes, out: &mut [T], f: impl Fn(usize, usize, &mut [T]) + Send + Sync) {
    if p.spatial == 0 {
        return;
    }
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(p.spatial).enumerate().for_each(|(i, plane)| f(i, i % p.channels, plane));
    }
    #[cfg(not(feature = "rayon"))]
    for (i, plane) in out.chunks_mut(p.spatial).enumerate() {
        f(i, i % p.channels, plane);
    }
}

fn values<T: Real>(t: &FlexTensor) -> Vec<f64> {
    t.to_contiguous().storage::<T>().iter().map(|v| v.to_f64()).collect()
}

fn tensor<T: Real>(data: Vec<T>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(data), Layout::contiguous(shape), T::DTYPE)
}

fn channel_tensor<T: Real>(values: &[f64]) -> FlexTensor {
    tensor(values.iter().map(|&v| T::from_f64(v)).collect(), Shape::new([values.len()]))
}

/// `y = x·a[c] + b[c]`, the normalisation with its affine part folded in.
fn affine<T: Real>(x: &[T], p: Planes, a: &[f64], b: &[f64]) -> Vec<T> {
    let mut y = vec![T::from_f64(0.0); x.len()];
    per_plane(p, &mut y, |i, c, plane| {
        let (a, b) = (a[c], b[c]);
        for (y, &x) in plane.iter_mut().zip(&x[i * p.spatial..][..p.spatial]) {
            *y = T::from_f64(x.to_f64() * a + b);
        }
    });
    y
}

/// Each channel's mean and biased variance, in two passes for accuracy.
fn statistics<T: Real>(x: &[T], p: Planes) -> (Vec<f64>, Vec<f64>) {
    let count = p.per_channel().max(1) as f64;
    per_channel(p.channels, |c| {
        let mean = p.channel(x, c).flatten().map(|v| v.to_f64()).sum::<f64>() / count;
        let var = p.channel(x, c).flatten().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / count;
        (mean, var)
    })
    .into_iter()
    .unzip()
}

fn inference_typed<T: Real>(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, mean: FlexTensor, var: FlexTensor, epsilon: f64) -> FlexTensor {
    let x = x.to_contiguous();
    let shape = x.layout().shape().clone();
    let p = Planes::of(&shape);
    let (gamma, beta, mean, var) = (values::<T>(&gamma), values::<T>(&beta), values::<T>(&mean), values::<T>(&var));
    let a: Vec<f64> = (0..p.channels).map(|c| gamma[c] / (var[c] + epsilon).sqrt()).collect();
    let b: Vec<f64> = (0..p.channels).map(|c| beta[c] - mean[c] * a[c]).collect();
    tensor(affine(x.storage::<T>(), p, &a, &b), shape)
}

fn train_typed<T: Real>(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f64) -> [FlexTensor; 3] {
    let x = x.to_contiguous();
    let shape = x.layout().shape().clone();
    let p = Planes::of(&shape);
    let data = x.storage::<T>();
    let (mean, var) = statistics(data, p);
    let (gamma, beta) = (values::<T>(&gamma), values::<T>(&beta));
    let a: Vec<f64> = (0..p.channels).map(|c| gamma[c] / (var[c] + epsilon).sqrt()).collect();
    let b: Vec<f64> = (0..p.channels).map(|c| beta[c] - mean[c] * a[c]).collect();
    [tensor(affine(data, p, &a, &b), shape), channel_tensor::<T>(&mean), channel_tensor::<T>(&var)]
}

fn train_backward_typed<T: Real>(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    epsilon: f64,
    output_grad: FlexTensor,
) -> [FlexTensor; 3] {
    let (x, dy) = (x.to_contiguous(), output_grad.to_contiguous());
    let shape = x.layout().shape().clone();
    let p = Planes::of(&shape);
    let (xs, dys) = (x.storage::<T>(), dy.storage::<T>());
    let (gamma, mean, var) = (values::<T>(&gamma), values::<T>(&mean), values::<T>(&var));
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + epsilon).sqrt()).collect();
    // Σ dy and Σ dy·x̂ per channel: β's and γ's gradients.
    let (beta_grad, gamma_grad): (Vec<f64>, Vec<f64>) = per_channel(p.channels, |c| {
        let (m, s) = (mean[c], inv_std[c]);
        p.channel(dys, c).flatten().zip(p.channel(xs, c).flatten()).fold((0.0, 0.0), |(sd, sdx), (dy, x)| {
            let dy = dy.to_f64();
            (sd + dy, sdx + dy * (x.to_f64() - m) * s)
        })
    })
    .into_iter()
    .unzip();
    // dx = γ·σ⁻¹·(dy − mean(dy) − x̂·mean(dy·x̂))
    let count = p.per_channel().max(1) as f64;
    let mut dx = vec![T::from_f64(0.0); xs.len()];
    per_plane(p, &mut dx, |i, c, plane| {
        let (m, s, scale) = (mean[c], inv_std[c], gamma[c] * inv_std[c]);
        let (mean_dy, mean_dy_xhat) = (beta_grad[c] / count, gamma_grad[c] / count);
        let (x, dy) = (&xs[i * p.spatial..][..p.spatial], &dys[i * p.spatial..][..p.spatial]);
        for ((out, &x), &dy) in plane.iter_mut().zip(x).zip(dy) {
            let xhat = (x.to_f64() - m) * s;
            *out = T::from_f64(scale * (dy.to_f64() - mean_dy - xhat * mean_dy_xhat));
        }
    });
    [tensor(dx, shape), channel_tensor::<T>(&gamma_grad), channel_tensor::<T>(&beta_grad)]
}

/// Batch normalisation with the given statistics.
pub fn batch_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, mean: FlexTensor, var: FlexTensor, epsilon: f64) -> FlexTensor {
    fn half<E: burn_backend::Element + bytemuck::Pod>(to: fn(E) -> f32, from: fn(f32) -> E, t: [FlexTensor; 5], epsilon: f64) -> FlexTensor {
        let [x, gamma, beta, mean, var] = t.map(|t| cast_to_f32(t, to));
        cast_from_f32(inference_typed::<f32>(x, gamma, beta, mean, var, epsilon), from)
    }
    match x.dtype() {
        DType::F32 => inference_typed::<f32>(x, gamma, beta, mean, var, epsilon),
        DType::F64 => inference_typed::<f64>(x, gamma, beta, mean, var, epsilon),
        DType::F16 => half(f16::to_f32, f16::from_f32, [x, gamma, beta, mean, var], epsilon),
        DType::BF16 => half(bf16::to_f32, bf16::from_f32, [x, gamma, beta, mean, var], epsilon),
        dtype => panic!("batch norm: unsupported dtype {dtype:?}"),
    }
}

/// Training batch normalisation: the output, and the batch's mean and biased variance.
pub fn batch_norm_train(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f64) -> [FlexTensor; 3] {
    fn half<E: burn_backend::Element + bytemuck::Pod>(to: fn(E) -> f32, from: fn(f32) -> E, t: [FlexTensor; 3], epsilon: f64) -> [FlexTensor; 3] {
        let [x, gamma, beta] = t.map(|t| cast_to_f32(t, to));
        train_typed::<f32>(x, gamma, beta, epsilon).map(|t| cast_from_f32(t, from))
    }
    match x.dtype() {
        DType::F32 => train_typed::<f32>(x, gamma, beta, epsilon),
        DType::F64 => train_typed::<f64>(x, gamma, beta, epsilon),
        DType::F16 => half(f16::to_f32, f16::from_f32, [x, gamma, beta], epsilon),
        DType::BF16 => half(bf16::to_f32, bf16::from_f32, [x, gamma, beta], epsilon),
        dtype => panic!("batch norm: unsupported dtype {dtype:?}"),
    }
}

/// Gradients of training batch normalisation for its input, γ and β.
pub fn batch_norm_train_backward(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    epsilon: f64,
    output_grad: FlexTensor,
) -> [FlexTensor; 3] {
    fn half<E: burn_backend::Element + bytemuck::Pod>(to: fn(E) -> f32, from: fn(f32) -> E, t: [FlexTensor; 5], epsilon: f64) -> [FlexTensor; 3] {
        let [x, gamma, mean, var, dy] = t.map(|t| cast_to_f32(t, to));
        train_backward_typed::<f32>(x, gamma, mean, var, epsilon, dy).map(|t| cast_from_f32(t, from))
    }
    match x.dtype() {
        DType::F32 => train_backward_typed::<f32>(x, gamma, mean, var, epsilon, output_grad),
        DType::F64 => train_backward_typed::<f64>(x, gamma, mean, var, epsilon, output_grad),
        DType::F16 => half(f16::to_f32, f16::from_f32, [x, gamma, mean, var, output_grad], epsilon),
        DType::BF16 => half(bf16::to_f32, bf16::from_f32, [x, gamma, mean, var, output_grad], epsilon),
        dtype => panic!("batch norm: unsupported dtype {dtype:?}"),
    }
}
