//! Bilinear resizing (corners aligned, as burn's `interpolate` does by default). The generators
//! of DRMGuard and FeatureRE and ISSBA's encoder are trained through their up-sampling. On the
//! CPU (flex) it is burn's `interpolate`, one kernel each way; burn 0.22's GPU backends have no
//! backward pass for bilinear `interpolate` (wgpu panics: "Bilinear interpolation backward is
//! not supported by JIT backend"), so there it is built from `select` and arithmetic, which are
//! differentiable on every backend.

use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Int, Tensor};

/// Resizes images `[n, c, h, w]` to `[n, c, out_h, out_w]` by bilinear interpolation with the
/// corner pixels aligned (source coordinate `i · (h − 1) / (out_h − 1)`).
pub fn resize_bilinear(x: Tensor<4>, out: [usize; 2]) -> Tensor<4> {
    if x.device().inner() == Device::flex() {
        return interpolate(x, InterpolateOptions::new(InterpolateMode::Bilinear).with_output_size(out));
    }
    resize_composed(x, out)
}

/// [`resize_bilinear`] from `select` and arithmetic, for the backends without its backward.
fn resize_composed(x: Tensor<4>, [out_h, out_w]: [usize; 2]) -> Tensor<4> {
    resize_axis(resize_axis(x, 2, out_h), 3, out_w)
}

fn resize_axis(x: Tensor<4>, dim: usize, out: usize) -> Tensor<4> {
    let n = x.dims()[dim];
    if n == out {
        return x;
    }
    let device = x.device();
    let mut lower = Vec::with_capacity(out);
    let mut upper = Vec::with_capacity(out);
    let mut frac = Vec::with_capacity(out);
    for i in 0..out {
        let src = if out > 1 { i as f64 * (n - 1) as f64 / (out - 1) as f64 } else { 0.0 };
        let lo = (src.floor() as usize).min(n - 1);
        lower.push(lo as i64);
        upper.push((lo + 1).min(n - 1) as i64);
        frac.push((src - lo as f64) as f32);
    }
    let mut shape = [1i64; 4];
    shape[dim] = out as i64;
    let weight = Tensor::<1>::from_floats(frac.as_slice(), &device).reshape(shape);
    let a = x.clone().select(dim, Tensor::<1, Int>::from_ints(lower.as_slice(), &device));
    let b = x.select(dim, Tensor::<1, Int>::from_ints(upper.as_slice(), &device));
    a.clone() + (b - a) * weight
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    use burn::tensor::{Device, Distribution, Tensor};

    use super::{resize_bilinear, resize_composed};

    #[test]
    fn the_composed_path_matches_burns_bilinear_interpolate_and_has_a_gradient() {
        let device = Device::flex().autodiff();
        for (size, out) in [([4, 4], [8, 8]), ([5, 3], [10, 6]), ([8, 8], [8, 8]), ([6, 4], [3, 2])] {
            let x = Tensor::<4>::random([2, 3, size[0], size[1]], Distribution::Uniform(0.0, 1.0), &device).require_grad();
            let ours = resize_composed(x.clone(), out);
            let burns = interpolate(x.clone(), InterpolateOptions::new(InterpolateMode::Bilinear).with_output_size(out));
            let diff = (ours.clone() - burns).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-5, "{size:?} → {out:?}: differs by {diff}");
            // Every input pixel that feeds the output gets a gradient; the sum of an
            // interpolation's weights is 1 per output pixel, so the gradient sums to the outputs.
            let grads = ours.sum().backward();
            let g = x.grad(&grads).expect("a gradient to the input");
            let total = g.sum().into_scalar::<f32>();
            let expected = (2 * 3 * out[0] * out[1]) as f32;
            assert!((total - expected).abs() < 1e-2 * expected, "{total} vs {expected}");
        }
    }

    #[test]
    fn the_cpu_path_gives_the_composed_paths_values_and_gradients() {
        let device = Device::flex().autodiff();
        assert!(device.clone().inner() == Device::flex(), "the CPU device takes the interpolate path");
        let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Uniform(0.0, 1.0), &device);
        let weights = Tensor::<4>::random([2, 3, 16, 16], Distribution::Uniform(0.0, 1.0), &device);
        let run = |f: fn(Tensor<4>, [usize; 2]) -> Tensor<4>| {
            let x = x.clone().require_grad();
            let y = f(x.clone(), [16, 16]);
            let grads = (y.clone() * weights.clone()).sum().backward();
            (y.into_data().try_to_vec::<f32>().unwrap(), x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap())
        };
        let (ours, ours_grad) = run(resize_bilinear);
        let (composed, composed_grad) = run(resize_composed);
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(max_diff(&ours, &composed) < 1e-5);
        assert!(max_diff(&ours_grad, &composed_grad) < 1e-4);
    }
}
