//! The CPU backend's fused kernels (conv2d backward, batch norm; vendor/burn-flex/PATCHES.md)
//! against direct f64 loops over the definitions, through burn's public autodiff, across the
//! shapes drmguard's networks use and the awkward ones they might (odd sizes, batch 1, stride,
//! dilation, groups, asymmetric padding).

use burn::tensor::module::{batch_norm, batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor<const D: usize>(data: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
}

fn read<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Largest absolute difference relative to the reference's largest magnitude.
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
    assert!(worst / scale < 1e-4, "{what}: relative error {:.2e}", worst / scale);
}

#[derive(Clone, Copy, Debug)]
struct Conv {
    batch: usize,
    c_in: usize,
    c_out: usize,
    size: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    /// (begin, end) per axis.
    padding: [(usize, usize); 2],
    dilation: [usize; 2],
    groups: usize,
}

impl Conv {
    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new_with_padding(self.stride, self.padding, self.dilation, self.groups)
    }

    fn out(&self, axis: usize) -> usize {
        let (b, e) = self.padding[axis];
        (self.size[axis] + b + e - self.dilation[axis] * (self.kernel[axis] - 1) - 1) / self.stride[axis] + 1
    }

    /// Calls `f([n, o, oh, ow, c, cg, i, j, ih, iw])` for every multiply-add of the convolution:
    /// input channel `c` (the `cg`-th of its group) under tap `(i, j)` reads pixel `(ih, iw)`.
    fn each(&self, mut f: impl FnMut([usize; 10])) {
        let (cin_g, cout_g) = (self.c_in / self.groups, self.c_out / self.groups);
        let inside = |o: usize, k: usize, axis: usize| {
            let at = (o * self.stride[axis] + k * self.dilation[axis]) as isize - self.padding[axis].0 as isize;
            (at >= 0 && (at as usize) < self.size[axis]).then_some(at as usize)
        };
        for n in 0..self.batch {
            for o in 0..self.c_out {
                for oh in 0..self.out(0) {
                    for ow in 0..self.out(1) {
                        for cg in 0..cin_g {
                            for i in 0..self.kernel[0] {
                                for j in 0..self.kernel[1] {
                                    if let (Some(ih), Some(iw)) = (inside(oh, i, 0), inside(ow, j, 1)) {
                                        f([n, o, oh, ow, o / cout_g * cin_g + cg, cg, i, j, ih, iw]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Checks `conv2d(x, w, b)` and the input, weight and bias gradients of `Σ r ⊙ conv2d(x, w, b)`.
    fn check(self) {
        let device = Device::flex().autodiff();
        let [h, w] = self.size;
        let [kh, kw] = self.kernel;
        let cin_g = self.c_in / self.groups;
        let (ho, wo) = (self.out(0), self.out(1));
        let xs = values(self.batch * self.c_in * h * w, 1);
        let ws = values(self.c_out * cin_g * kh * kw, 2);
        let bs = values(self.c_out, 3);
        let rs = values(self.batch * self.c_out * ho * wo, 4);
        let x = tensor(&xs, [self.batch, self.c_in, h, w], &device).require_grad();
        let weight = tensor(&ws, [self.c_out, cin_g, kh, kw], &device).require_grad();
        let bias = tensor(&bs, [self.c_out], &device).require_grad();
        let r = tensor(&rs, [self.batch, self.c_out, ho, wo], &device);
        let y = conv2d(x.clone(), weight.clone(), Some(bias.clone()), self.options());
        assert_eq!(y.dims(), [self.batch, self.c_out, ho, wo], "{self:?}: output shape");
        let got_y = read(y.clone());
        let grads = (y * r).sum().backward();

        let (mut dx, mut dw, mut db) = (vec![0f64; xs.len()], vec![0f64; ws.len()], vec![0f64; bs.len()]);
        let mut want_y: Vec<f64> = (0..rs.len()).map(|i| bs[i / (ho * wo) % self.c_out] as f64).collect();
        self.each(|[n, o, oh, ow, c, cg, i, j, ih, iw]| {
            let yi = ((n * self.c_out + o) * ho + oh) * wo + ow;
            let g = rs[yi] as f64;
            let xi = ((n * self.c_in + c) * h + ih) * w + iw;
            let wi = ((o * cin_g + cg) * kh + i) * kw + j;
            want_y[yi] += ws[wi] as f64 * xs[xi] as f64;
            dx[xi] += g * ws[wi] as f64;
            dw[wi] += g * xs[xi] as f64;
        });
        for n in 0..self.batch {
            for o in 0..self.c_out {
                db[o] += rs[(n * self.c_out + o) * ho * wo..][..ho * wo].iter().map(|&v| v as f64).sum::<f64>();
            }
        }
        assert_close(&format!("{self:?}: output"), &got_y, &want_y);
        assert_close(&format!("{self:?}: input gradient"), &read(x.grad(&grads).unwrap()), &dx);
        assert_close(&format!("{self:?}: weight gradient"), &read(weight.grad(&grads).unwrap()), &dw);
        assert_close(&format!("{self:?}: bias gradient"), &read(bias.grad(&grads).unwrap()), &db);
    }
}

const PLAIN: Conv = Conv { batch: 3, c_in: 4, c_out: 5, size: [9, 9], kernel: [3, 3], stride: [1, 1], padding: [(1, 1); 2], dilation: [1, 1], groups: 1 };

#[test]
fn conv2d_and_its_gradients_match_the_definition_on_drmguards_shapes() {
    // ResNet-18's stem, a 3×3 block, a strided block and its 1×1 shortcut; the U-Net's 3×3.
    Conv { batch: 2, c_in: 3, c_out: 8, size: [17, 15], kernel: [7, 7], stride: [2, 2], padding: [(3, 3); 2], ..PLAIN }.check();
    PLAIN.check();
    Conv { stride: [2, 2], size: [10, 10], ..PLAIN }.check();
    Conv { kernel: [1, 1], stride: [2, 2], padding: [(0, 0); 2], ..PLAIN }.check();
    Conv { batch: 5, c_in: 2, c_out: 3, size: [16, 16], ..PLAIN }.check();
    // deep layers: 2×2 and 4×4 outputs, many images stacked into one product
    Conv { batch: 33, c_in: 16, c_out: 8, size: [4, 4], stride: [2, 2], ..PLAIN }.check();
    Conv { batch: 9, c_in: 8, c_out: 8, size: [2, 2], ..PLAIN }.check();
    // a U-Net layer: wide rows, copied row by row, and a pointwise convolution read in place
    Conv { batch: 2, c_in: 3, c_out: 4, size: [20, 34], ..PLAIN }.check();
    Conv { batch: 2, c_in: 6, c_out: 4, size: [20, 34], kernel: [1, 1], padding: [(0, 0); 2], ..PLAIN }.check();
    Conv { batch: 3, c_in: 8, c_out: 4, size: [3, 40], kernel: [1, 1], padding: [(0, 0); 2], ..PLAIN }.check();
}

#[test]
fn conv2d_and_its_gradients_match_the_definition_on_awkward_shapes() {
    Conv { batch: 1, ..PLAIN }.check();
    Conv { size: [7, 11], kernel: [3, 2], ..PLAIN }.check();
    Conv { dilation: [2, 3], padding: [(2, 2), (3, 3)], ..PLAIN }.check();
    Conv { c_in: 4, c_out: 6, groups: 2, ..PLAIN }.check();
    Conv { c_in: 4, c_out: 4, groups: 4, ..PLAIN }.check();
    Conv { padding: [(1, 2), (0, 1)], ..PLAIN }.check();
    // taps that never reach the last rows and columns, and padding wider than the kernel
    Conv { kernel: [2, 2], stride: [3, 3], size: [10, 11], padding: [(0, 0); 2], ..PLAIN }.check();
    Conv { kernel: [3, 3], padding: [(4, 4); 2], size: [3, 4], ..PLAIN }.check();
    // the same on wide rows (row copies rather than the tap table)
    Conv { size: [5, 37], stride: [2, 3], dilation: [1, 2], padding: [(1, 0), (2, 5)], ..PLAIN }.check();
    Conv { c_in: 6, c_out: 6, groups: 3, size: [4, 40], ..PLAIN }.check();
}

/// Mean and biased variance of each channel of a `[batch, channels, spatial]` array, in f64.
fn channel_stats(x: &[f32], [batch, channels, spatial]: [usize; 3]) -> Vec<(f64, f64)> {
    (0..channels)
        .map(|c| {
            let v: Vec<f64> = (0..batch).flat_map(|n| x[(n * channels + c) * spatial..][..spatial].iter().map(|&v| v as f64)).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            (mean, v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64)
        })
        .collect()
}

#[test]
fn training_batch_norm_and_its_gradients_match_the_definition() {
    let device = Device::flex().autodiff();
    let (batch, channels, h, w, eps) = (3usize, 5usize, 4usize, 6usize, 1e-5);
    let spatial = h * w;
    let index = |n: usize, c: usize, s: usize| (n * channels + c) * spatial + s;
    let xs: Vec<f32> = values(batch * channels * spatial, 5).iter().enumerate().map(|(i, v)| v * 3.0 + (i / spatial % channels) as f32).collect();
    let (gs, bs, rs) = (values(channels, 6), values(channels, 7), values(xs.len(), 8));
    let x = tensor(&xs, [batch, channels, h, w], &device).require_grad();
    let gamma = tensor(&gs, [channels], &device).require_grad();
    let beta = tensor(&bs, [channels], &device).require_grad();
    let out = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), eps);
    let stats = channel_stats(&xs, [batch, channels, spatial]);
    assert_close("mean", &read(out.mean.clone()), &stats.iter().map(|s| s.0).collect::<Vec<_>>());
    assert_close("variance", &read(out.variance.clone()), &stats.iter().map(|s| s.1).collect::<Vec<_>>());
    let y = read(out.output.clone());
    let grads = (out.output * tensor(&rs, [batch, channels, h, w], &device)).sum().backward();

    let m = (batch * spatial) as f64;
    let (mut want_y, mut dx, mut dg, mut db) = (vec![0f64; xs.len()], vec![0f64; xs.len()], vec![0f64; channels], vec![0f64; channels]);
    for c in 0..channels {
        let (mean, var) = stats[c];
        let inv = 1.0 / (var + eps).sqrt();
        let xhat = |n, s| (xs[index(n, c, s)] as f64 - mean) * inv;
        let (mut sum_r, mut sum_r_xhat) = (0.0, 0.0);
        for n in 0..batch {
            for s in 0..spatial {
                let r = rs[index(n, c, s)] as f64;
                want_y[index(n, c, s)] = xhat(n, s) * gs[c] as f64 + bs[c] as f64;
                sum_r += r;
                sum_r_xhat += r * xhat(n, s);
            }
        }
        db[c] = sum_r;
        dg[c] = sum_r_xhat;
        for n in 0..batch {
            for s in 0..spatial {
                let r = rs[index(n, c, s)] as f64;
                dx[index(n, c, s)] = gs[c] as f64 * inv * (r - sum_r / m - xhat(n, s) * sum_r_xhat / m);
            }
        }
    }
    assert_close("output", &y, &want_y);
    assert_close("input gradient", &read(x.grad(&grads).unwrap()), &dx);
    assert_close("gamma gradient", &read(gamma.grad(&grads).unwrap()), &dg);
    assert_close("beta gradient", &read(beta.grad(&grads).unwrap()), &db);
}

#[test]
fn inference_batch_norm_uses_the_given_statistics() {
    let device = Device::flex();
    let (batch, channels, spatial, eps) = (2usize, 3usize, 5usize, 1e-3);
    let xs = values(batch * channels * spatial, 9);
    let (gs, bs, ms) = (values(channels, 10), values(channels, 11), values(channels, 12));
    let vs: Vec<f32> = values(channels, 13).iter().map(|v| v.abs() + 0.1).collect();
    let y = batch_norm(
        tensor(&xs, [batch, channels, spatial], &device),
        tensor(&gs, [channels], &device),
        tensor(&bs, [channels], &device),
        tensor(&ms, [channels], &device),
        tensor(&vs, [channels], &device),
        eps,
    );
    let want: Vec<f64> = xs
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = i / spatial % channels;
            (x as f64 - ms[c] as f64) / (vs[c] as f64 + eps).sqrt() * gs[c] as f64 + bs[c] as f64
        })
        .collect();
    assert_close("output", &read(y), &want);
}

#[test]
fn convolution_results_do_not_depend_on_the_thread_count() {
    // The output and both gradients of a training-sized convolution, computed in pools of 1, 2
    // and 5 threads: the batch is split by shape alone, so every bit must agree.
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
            let device = Device::flex().autodiff();
            let conv = Conv { batch: 13, c_in: 6, c_out: 8, size: [8, 8], ..PLAIN };
            let x = tensor(&values(13 * 6 * 64, 21), [13, 6, 8, 8], &device).require_grad();
            let w = tensor(&values(8 * 6 * 9, 22), [8, 6, 3, 3], &device).require_grad();
            let y = conv2d(x.clone(), w.clone(), None, conv.options());
            let r = tensor(&values(13 * 8 * 64, 23), [13, 8, 8, 8], &device);
            let grads = (y.clone() * r).sum().backward();
            [read(y), read(x.grad(&grads).unwrap()), read(w.grad(&grads).unwrap())]
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(5));
}
