//! 2-D convolution and its gradients as matrix products over blocks of images, on the NCHW layout.
//!
//! With `cols` the im2col expansion of a block of images side by side (one row per input channel
//! and kernel tap, one column per output pixel of each image) and `[g]` a group's rows:
//! - forward: `Y[g] = W[g] · cols[g]` (+ bias);
//! - weight gradient: `dW[g] += dY[g] · cols[g]ᵀ`, summed over a fixed split of the blocks into
//!   partial gradients, the partials then added in order;
//! - input gradient: `dcols[g] = W[g]ᵀ · dY[g]`, then col2im.
//!
//! A block is one image where an image has enough output pixels to make a good product, and
//! several where it does not (the deep layers of a CNN, 2×2 to 8×8 pixels). Blocks run in parallel,
//! each thread reusing its buffers; gemm takes the threads itself only when there are fewer blocks
//! than threads. The split depends on the shapes alone, not on the thread count, so results are
//! the same bit for bit on any number of threads.
//!
//! burn's generic backward (a transposed convolution for the input gradient, a convolution with
//! batch and channels swapped for the weight gradient) and flex's tiled NHWC forward run mostly on
//! one thread at the sizes of a small CNN, and copy their operands several times.
//!
//! Groups, stride, dilation and asymmetric padding are all handled: padding only shifts where a
//! kernel tap reads (its end side is implied by the output size). f32 and f64 run natively, f16
//! and bf16 through f32.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_std::{Bytes, Shape, bf16, f16};

use crate::ops::module::{cast_from_f32, cast_to_f32};
use crate::{FlexTensor, Layout};

/// The element types the kernels run on natively.
trait Real: bytemuck::Pod + burn_backend::Element + Copy + Send + Sync + core::ops::AddAssign + 'static {
    const ZERO: Self;
    const ONE: Self;
    const DTYPE: DType;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const DTYPE: DType = DType::F32;
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const DTYPE: DType = DType::F64;
}

/// The sizes of one convolution, read from its input shape, weight shape and output gradient.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    c_in: usize,
    in_h: usize,
    in_w: usize,
    c_out: usize,
    k_h: usize,
    k_w: usize,
    out_h: usize,
    out_w: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
}

impl Geometry {
    fn new(x: &[usize], weight: &[usize], output_grad: &[usize], options: &ConvOptions<2>) -> Self {
        assert_eq!(x.len(), 4, "conv2d backward: the input must be 4-D");
        assert_eq!(weight.len(), 4, "conv2d backward: the weight must be 4-D");
        assert_eq!(output_grad.len(), 4, "conv2d backward: the output gradient must be 4-D");
        let g = Self {
            batch: x[0],
            c_in: x[1],
            in_h: x[2],
            in_w: x[3],
            c_out: weight[0],
            k_h: weight[2],
            k_w: weight[3],
            out_h: output_grad[2],
            out_w: output_grad[3],
            stride: options.stride,
            pad: options.padding_begin(),
            dilation: options.dilation,
            groups: options.groups,
        };
        assert!(g.groups > 0 && g.c_in % g.groups == 0 && g.c_out % g.groups == 0, "conv2d backward: channels must divide into the groups");
        assert_eq!(weight[1], g.c_in / g.groups, "conv2d backward: the weight's input channels do not match the input's");
        assert_eq!(output_grad[0], g.batch, "conv2d backward: the output gradient's batch does not match the input's");
        assert_eq!(output_grad[1], g.c_out, "conv2d backward: the output gradient's channels do not match the weight's");
        g
    }

    /// The geometry of a forward convolution, its output size computed from both paddings.
    fn forward(x: &[usize], weight: &[usize], options: &ConvOptions<2>) -> Self {
        let out = |axis: usize| {
            let (begin, end) = options.padding[axis];
            let span = options.dilation[axis] * (weight[2 + axis] - 1) + 1;
            let padded = x[2 + axis] + begin + end;
            assert!(padded >= span, "conv2d: the kernel ({span} with dilation) is larger than the padded input ({padded})");
            (padded - span) / options.stride[axis] + 1
        };
        Self::new(x, weight, &[x[0], weight[0], out(0), out(1)], options)
    }

    /// A 1×1, stride-1, unpadded convolution, whose im2col is the image itself.
    fn is_pointwise(&self) -> bool {
        self.k_h == 1 && self.k_w == 1 && self.stride == [1, 1] && self.pad == [0, 0] && self.out_h == self.in_h && self.out_w == self.in_w
    }

    /// Output pixels per channel: the columns of every product.
    fn spatial_out(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Rows of one group's columns: its input channels times the kernel taps.
    fn group_rows(&self) -> usize {
        self.c_in / self.groups * self.k_h * self.k_w
    }

    fn image_len(&self) -> usize {
        self.c_in * self.in_h * self.in_w
    }

    fn output_image_len(&self) -> usize {
        self.c_out * self.spatial_out()
    }

    /// The output columns `lo..hi` whose input column `o·stride + offset − pad` lies inside
    /// `0..size`, along one axis.
    fn valid(offset: usize, pad: usize, stride: usize, size: usize, out: usize) -> (usize, usize) {
        // first o with o·s + offset ≥ pad
        let lo = if pad > offset { (pad - offset).div_ceil(stride) } else { 0 }.min(out);
        // first o with o·s + offset ≥ size + pad
        let hi = if size + pad > offset { (size + pad - offset).div_ceil(stride) } else { 0 }.min(out);
        (lo, hi.max(lo))
    }
}

/// Output rows narrower than this are laid out by [`Taps`]: per-row copies cost more in bookkeeping
/// than in data there.
const NARROW: usize = 16;

/// For narrow outputs: where each kernel tap reads in a channel plane, for every output pixel
/// (`usize::MAX` in the padding), computed once per convolution.
struct Taps(Vec<usize>);

impl Taps {
    fn new(g: &Geometry) -> Option<Self> {
        if g.out_w >= NARROW {
            return None;
        }
        let mut offsets = Vec::with_capacity(g.k_h * g.k_w * g.spatial_out());
        for i in 0..g.k_h {
            for j in 0..g.k_w {
                for oh in 0..g.out_h {
                    for ow in 0..g.out_w {
                        let ih = (oh * g.stride[0] + i * g.dilation[0]).wrapping_sub(g.pad[0]);
                        let iw = (ow * g.stride[1] + j * g.dilation[1]).wrapping_sub(g.pad[1]);
                        offsets.push(if ih < g.in_h && iw < g.in_w { ih * g.in_w + iw } else { usize::MAX });
                    }
                }
            }
        }
        Some(Self(offsets))
    }

    fn im2col<T: Real>(&self, image: &[T], cols: &mut [T], ld: usize, g: &Geometry) {
        let (spatial, taps) = (g.spatial_out(), g.k_h * g.k_w);
        for c in 0..g.c_in {
            let plane = &image[c * g.in_h * g.in_w..][..g.in_h * g.in_w];
            for (t, offsets) in self.0.chunks_exact(spatial).enumerate() {
                let row = &mut cols[(c * taps + t) * ld..][..spatial];
                for (d, &o) in row.iter_mut().zip(offsets) {
                    *d = if o == usize::MAX { T::ZERO } else { plane[o] };
                }
            }
        }
    }

    fn col2im<T: Real>(&self, cols: &[T], ld: usize, image: &mut [T], g: &Geometry) {
        let (spatial, taps) = (g.spatial_out(), g.k_h * g.k_w);
        for c in 0..g.c_in {
            let plane = &mut image[c * g.in_h * g.in_w..][..g.in_h * g.in_w];
            for (t, offsets) in self.0.chunks_exact(spatial).enumerate() {
                for (&v, &o) in cols[(c * taps + t) * ld..][..spatial].iter().zip(offsets) {
                    if o != usize::MAX {
                        plane[o] += v;
                    }
                }
            }
        }
    }
}

/// Lays one image's kernel taps out as rows of `cols` (row stride `ld`): entry `[(c·k_h + i)·k_w +
/// j][oh·out_w + ow]` is the input pixel that tap (i, j) of channel c reads for output pixel
/// (oh, ow), 0 in the padding.
fn im2col<T: Real>(image: &[T], cols: &mut [T], ld: usize, g: &Geometry) {
    let spatial = g.spatial_out();
    let [s_h, s_w] = g.stride;
    let [p_h, p_w] = g.pad;
    let [d_h, d_w] = g.dilation;
    for c in 0..g.c_in {
        let plane = &image[c * g.in_h * g.in_w..][..g.in_h * g.in_w];
        for i in 0..g.k_h {
            let (oh_lo, oh_hi) = Geometry::valid(i * d_h, p_h, s_h, g.in_h, g.out_h);
            for j in 0..g.k_w {
                let row = &mut cols[((c * g.k_h + i) * g.k_w + j) * ld..][..spatial];
                let (ow_lo, ow_hi) = Geometry::valid(j * d_w, p_w, s_w, g.in_w, g.out_w);
                row[..oh_lo * g.out_w].fill(T::ZERO);
                row[oh_hi * g.out_w..].fill(T::ZERO);
                for oh in oh_lo..oh_hi {
                    let src = &plane[(oh * s_h + i * d_h - p_h) * g.in_w..][..g.in_w];
                    let dst = &mut row[oh * g.out_w..][..g.out_w];
                    dst[..ow_lo].fill(T::ZERO);
                    dst[ow_hi..].fill(T::ZERO);
                    if ow_lo == ow_hi {
                        continue;
                    }
                    let first = ow_lo * s_w + j * d_w - p_w;
                    if s_w == 1 {
                        dst[ow_lo..ow_hi].copy_from_slice(&src[first..first + (ow_hi - ow_lo)]);
                    } else {
                        for (k, d) in dst[ow_lo..ow_hi].iter_mut().enumerate() {
                            *d = src[first + k * s_w];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every entry of `cols` (row stride `ld`) back onto the input
/// pixel it was read from, into a zeroed `image`.
fn col2im<T: Real>(cols: &[T], ld: usize, image: &mut [T], g: &Geometry) {
    let [s_h, s_w] = g.stride;
    let [p_h, p_w] = g.pad;
    let [d_h, d_w] = g.dilation;
    for c in 0..g.c_in {
        let plane = &mut image[c * g.in_h * g.in_w..][..g.in_h * g.in_w];
        for i in 0..g.k_h {
            let (oh_lo, oh_hi) = Geometry::valid(i * d_h, p_h, s_h, g.in_h, g.out_h);
            for j in 0..g.k_w {
                let row = &cols[((c * g.k_h + i) * g.k_w + j) * ld..];
                let (ow_lo, ow_hi) = Geometry::valid(j * d_w, p_w, s_w, g.in_w, g.out_w);
                if ow_lo == ow_hi {
                    continue;
                }
                let first = ow_lo * s_w + j * d_w - p_w;
                for oh in oh_lo..oh_hi {
                    let dst = &mut plane[(oh * s_h + i * d_h - p_h) * g.in_w..][..g.in_w];
                    let src = &row[oh * g.out_w + ow_lo..oh * g.out_w + ow_hi];
                    if s_w == 1 {
                        for (d, &v) in dst[first..first + src.len()].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (k, &v) in src.iter().enumerate() {
                            dst[first + k * s_w] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Columns a product should have at least: below this, gemm's packing and dispatch outweigh the
/// arithmetic, so images whose outputs are smaller are stacked side by side into one product.
const MIN_COLUMNS: usize = 512;

/// The least number of parts a batch is split into, whatever the thread count: the parts run in
/// parallel, and a fixed split keeps every result bit for bit the same on 1, 2 or 16 threads.
const PARTS: usize = 4;

/// Images per product: enough for [`MIN_COLUMNS`] columns, but at most a [`PARTS`]-th of the batch
/// (a product's im2col runs on one thread).
fn block_images(g: &Geometry) -> usize {
    MIN_COLUMNS.div_ceil(g.spatial_out().max(1)).min(g.batch.div_ceil(PARTS)).max(1)
}

/// gemm's threads for one product: its own only where the blocks alone cannot fill the pool.
fn inner_parallelism(blocks: usize) -> gemm::Parallelism {
    #[cfg(feature = "rayon")]
    if blocks < rayon::current_num_threads() {
        return gemm::Parallelism::Rayon(0);
    }
    let _ = blocks;
    gemm::Parallelism::None
}

/// Splits `0..n` into at most [`PARTS`] contiguous ranges, the same on any thread count.
fn fixed_ranges(n: usize) -> Vec<core::ops::Range<usize>> {
    let parts = PARTS.min(n).max(1);
    (0..parts).map(|p| p * n / parts..(p + 1) * n / parts).collect()
}

/// `f(block, its slice of out)` for every block of `per_block` consecutive items of `len` elements,
/// blocks in parallel, each thread with its own scratch.
fn per_block<T: Real, S: Default + Send>(out: &mut [T], len: usize, per_block: usize, f: impl Fn(&mut S, usize, &mut [T]) + Send + Sync) {
    if len == 0 {
        return;
    }
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(len * per_block).enumerate().for_each_init(S::default, |scratch, (b, chunk)| f(scratch, b, chunk));
    }
    #[cfg(not(feature = "rayon"))]
    {
        let mut scratch = S::default();
        for (b, chunk) in out.chunks_mut(len * per_block).enumerate() {
            f(&mut scratch, b, chunk);
        }
    }
}

/// The columns of the images `first..first + count` side by side (row stride `count·spatial`):
/// the image itself for one image of a pointwise convolution, else im2col into `buffer`.
fn block_columns<'a, T: Real>(x: &'a [T], first: usize, count: usize, buffer: &'a mut Vec<T>, taps: Option<&Taps>, g: &Geometry) -> &'a [T] {
    let (spatial, len) = (g.spatial_out(), g.image_len());
    if count == 1 && g.is_pointwise() {
        return &x[first * len..][..len];
    }
    let ld = count * spatial;
    buffer.resize(g.groups * g.group_rows() * ld, T::ZERO);
    for k in 0..count {
        let (image, cols) = (&x[(first + k) * len..][..len], &mut buffer[k * spatial..]);
        match taps {
            Some(taps) => taps.im2col(image, cols, ld, g),
            None => im2col(image, cols, ld, g),
        }
    }
    buffer
}

/// The output gradients of the images `first..first + count` side by side (`[c_out][count·spatial]`):
/// the image's own for one image, else gathered into `buffer`.
fn block_rows<'a, T: Real>(dy: &'a [T], first: usize, count: usize, buffer: &'a mut Vec<T>, g: &Geometry) -> &'a [T] {
    let (spatial, len) = (g.spatial_out(), g.output_image_len());
    if count == 1 {
        return &dy[first * len..][..len];
    }
    let ld = count * spatial;
    buffer.resize(g.c_out * ld, T::ZERO);
    for k in 0..count {
        for o in 0..g.c_out {
            buffer[o * ld + k * spatial..][..spatial].copy_from_slice(&dy[(first + k) * len + o * spatial..][..spatial]);
        }
    }
    buffer
}

/// `dst (m × n, row stride ld_dst) (+)= lhs · rhs`, with the strides of each operand given as
/// (row, column).
#[allow(clippy::too_many_arguments)]
unsafe fn product<T: Real>(
    [m, n, k]: [usize; 3],
    dst: *mut T,
    ld_dst: usize,
    accumulate: bool,
    lhs: *const T,
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: *const T,
    [rhs_rs, rhs_cs]: [usize; 2],
    parallelism: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m, n, k, dst, 1, ld_dst as isize, accumulate, lhs, lhs_cs as isize, lhs_rs as isize, rhs, rhs_cs as isize,
            rhs_rs as isize, T::ONE, T::ONE, false, false, false, parallelism,
        );
    }
}

#[derive(Default)]
struct Scratch<T> {
    columns: Vec<T>,
    rows: Vec<T>,
}

fn forward<T: Real>(x: &[T], weight: &[T], bias: Option<&[T]>, g: &Geometry) -> Vec<T> {
    let (spatial, rows, cout_g) = (g.spatial_out(), g.group_rows(), g.c_out / g.groups);
    let block = block_images(g);
    let taps = Taps::new(g);
    let parallelism = inner_parallelism(g.batch.div_ceil(block));
    let mut y = vec![T::ZERO; g.batch * g.output_image_len()];
    per_block(&mut y, g.output_image_len(), block, |s: &mut Scratch<T>, b, y_block| {
        let count = y_block.len() / g.output_image_len();
        let ld = count * spatial;
        let cols = block_columns(x, b * block, count, &mut s.columns, taps.as_ref(), g);
        // One image writes straight into its output; a stack of them into scratch, scattered after.
        let out: &mut [T] = if count == 1 {
            &mut *y_block
        } else {
            s.rows.resize(g.c_out * ld, T::ZERO);
            &mut s.rows
        };
        if let Some(bias) = bias {
            for (o, &v) in bias.iter().enumerate() {
                out[o * ld..][..ld].fill(v);
            }
        }
        for group in 0..g.groups {
            // Y[g] (cout_g × ld) = W[g] (cout_g × rows) · cols[g] (rows × ld)
            unsafe {
                product(
                    [cout_g, ld, rows],
                    out.as_mut_ptr().add(group * cout_g * ld),
                    ld,
                    bias.is_some(),
                    weight.as_ptr().add(group * cout_g * rows),
                    [rows, 1],
                    cols.as_ptr().add(group * rows * ld),
                    [ld, 1],
                    parallelism,
                );
            }
        }
        if count > 1 {
            for k in 0..count {
                for o in 0..g.c_out {
                    y_block[k * g.output_image_len() + o * spatial..][..spatial].copy_from_slice(&s.rows[o * ld + k * spatial..][..spatial]);
                }
            }
        }
    });
    y
}

fn weight_grad<T: Real>(x: &[T], output_grad: &[T], g: &Geometry) -> Vec<T> {
    let (spatial, rows, cout_g) = (g.spatial_out(), g.group_rows(), g.c_out / g.groups);
    let len = g.c_out * rows;
    let block = block_images(g);
    let taps = Taps::new(g);
    let blocks = g.batch.div_ceil(block);
    let parallelism = inner_parallelism(blocks);
    let partial = |range: core::ops::Range<usize>| {
        let mut dw = vec![T::ZERO; len];
        let mut s = Scratch::default();
        for (i, b) in range.enumerate() {
            let count = block.min(g.batch - b * block);
            let ld = count * spatial;
            let cols = block_columns(x, b * block, count, &mut s.columns, taps.as_ref(), g);
            let dy = block_rows(output_grad, b * block, count, &mut s.rows, g);
            for group in 0..g.groups {
                // dW[g] (cout_g × rows) += dY[g] (cout_g × ld) · cols[g]ᵀ (ld × rows)
                unsafe {
                    product(
                        [cout_g, rows, ld],
                        dw.as_mut_ptr().add(group * cout_g * rows),
                        rows,
                        i > 0,
                        dy.as_ptr().add(group * cout_g * ld),
                        [ld, 1],
                        cols.as_ptr().add(group * rows * ld),
                        [1, ld],
                        parallelism,
                    );
                }
            }
        }
        dw
    };
    let ranges = fixed_ranges(blocks);
    #[cfg(feature = "rayon")]
    let partials: Vec<Vec<T>> = {
        use rayon::prelude::*;
        ranges.into_par_iter().map(partial).collect()
    };
    #[cfg(not(feature = "rayon"))]
    let partials: Vec<Vec<T>> = ranges.into_iter().map(partial).collect();
    let mut partials = partials.into_iter();
    let mut dw = partials.next().unwrap_or_else(|| vec![T::ZERO; len]);
    for p in partials {
        for (d, v) in dw.iter_mut().zip(p) {
            *d += v;
        }
    }
    dw
}

fn input_grad<T: Real>(weight: &[T], output_grad: &[T], g: &Geometry) -> Vec<T> {
    let (spatial, rows, cout_g) = (g.spatial_out(), g.group_rows(), g.c_out / g.groups);
    let block = block_images(g);
    let taps = Taps::new(g);
    let parallelism = inner_parallelism(g.batch.div_ceil(block));
    let mut dx = vec![T::ZERO; g.batch * g.image_len()];
    per_block(&mut dx, g.image_len(), block, |s: &mut Scratch<T>, b, dx_block| {
        let count = dx_block.len() / g.image_len();
        let ld = count * spatial;
        let dy = block_rows(output_grad, b * block, count, &mut s.rows, g);
        s.columns.resize(g.groups * rows * ld, T::ZERO);
        for group in 0..g.groups {
            // dcols[g] (rows × ld) = W[g]ᵀ (rows × cout_g) · dY[g] (cout_g × ld)
            unsafe {
                product(
                    [rows, ld, cout_g],
                    s.columns.as_mut_ptr().add(group * rows * ld),
                    ld,
                    false,
                    weight.as_ptr().add(group * cout_g * rows),
                    [1, rows],
                    dy.as_ptr().add(group * cout_g * ld),
                    [ld, 1],
                    parallelism,
                );
            }
        }
        for (k, dx_n) in dx_block.chunks_mut(g.image_len()).enumerate() {
            match &taps {
                Some(taps) => taps.col2im(&s.columns[k * spatial..], ld, dx_n, g),
                None => col2im(&s.columns[k * spatial..], ld, dx_n, g),
            }
        }
    });
    dx
}

fn tensor<T: Real>(data: Vec<T>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(data), Layout::contiguous(shape), T::DTYPE)
}

fn forward_typed<T: Real>(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>, options: &ConvOptions<2>) -> FlexTensor {
    let (x, weight, bias) = (x.to_contiguous(), weight.to_contiguous(), bias.map(|b| b.to_contiguous()));
    let g = Geometry::forward(x.layout().shape(), weight.layout().shape(), options);
    let y = forward::<T>(x.storage(), weight.storage(), bias.as_ref().map(|b| b.storage()), &g);
    tensor(y, Shape::new([g.batch, g.c_out, g.out_h, g.out_w]))
}

fn weight_backward_typed<T: Real>(x: FlexTensor, weight: FlexTensor, output_grad: FlexTensor, options: &ConvOptions<2>) -> FlexTensor {
    let (x, output_grad) = (x.to_contiguous(), output_grad.to_contiguous());
    let weight_shape = weight.layout().shape().clone();
    let g = Geometry::new(x.layout().shape(), &weight_shape, output_grad.layout().shape(), options);
    tensor(weight_grad::<T>(x.storage(), output_grad.storage(), &g), weight_shape)
}

fn input_backward_typed<T: Real>(x: FlexTensor, weight: FlexTensor, output_grad: FlexTensor, options: &ConvOptions<2>) -> FlexTensor {
    let (weight, output_grad) = (weight.to_contiguous(), output_grad.to_contiguous());
    let x_shape = x.layout().shape().clone();
    let g = Geometry::new(&x_shape, weight.layout().shape(), output_grad.layout().shape(), options);
    tensor(input_grad::<T>(weight.storage(), output_grad.storage(), &g), x_shape)
}

/// Runs `f32_op` in f32 on half-precision operands, casting its result back.
fn via_f32(
    dtype: DType,
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
    op: fn(FlexTensor, FlexTensor, FlexTensor, &ConvOptions<2>) -> FlexTensor,
) -> FlexTensor {
    match dtype {
        DType::F16 => cast_from_f32(
            op(cast_to_f32(x, f16::to_f32), cast_to_f32(weight, f16::to_f32), cast_to_f32(output_grad, f16::to_f32), options),
            f16::from_f32,
        ),
        DType::BF16 => cast_from_f32(
            op(cast_to_f32(x, bf16::to_f32), cast_to_f32(weight, bf16::to_f32), cast_to_f32(output_grad, bf16::to_f32), options),
            bf16::from_f32,
        ),
        dtype => panic!("conv2d backward: unsupported dtype {dtype:?}"),
    }
}

/// A 2-D convolution, f32 and f64 only (the caller keeps its own path for half precision).
pub fn conv2d(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>, options: &ConvOptions<2>) -> FlexTensor {
    match x.dtype() {
        DType::F32 => forward_typed::<f32>(x, weight, bias, options),
        DType::F64 => forward_typed::<f64>(x, weight, bias, options),
        dtype => panic!("conv2d: unsupported dtype {dtype:?}"),
    }
}

/// Whether [`conv2d`] is the faster path: anything but a depthwise convolution (one channel per
/// group, which a per-plane loop does without a product) or a stride-1 convolution of very few
/// channels (flex's direct loop), in f32 or f64.
pub fn conv2d_prefers_gemm(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> bool {
    let (x_shape, w_shape) = (x.layout().shape(), weight.layout().shape());
    let depthwise = w_shape[1] == 1 && options.groups == x_shape[1] && options.groups > 1;
    let few_channels = options.groups == 1 && options.stride == [1, 1] && x_shape[1] <= 4 && w_shape[0] <= 16;
    matches!(x.dtype(), DType::F32 | DType::F64) && !depthwise && !few_channels
}

/// The gradient of a 2-D convolution's output with respect to its weight.
pub fn conv2d_weight_backward(x: FlexTensor, weight: FlexTensor, output_grad: FlexTensor, options: &ConvOptions<2>) -> FlexTensor {
    match x.dtype() {
        DType::F32 => weight_backward_typed::<f32>(x, weight, output_grad, options),
        DType::F64 => weight_backward_typed::<f64>(x, weight, output_grad, options),
        dtype => via_f32(dtype, x, weight, output_grad, options, weight_backward_typed::<f32>),
    }
}

/// The gradient of a 2-D convolution's output with respect to its input.
pub fn conv2d_x_backward(x: FlexTensor, weight: FlexTensor, output_grad: FlexTensor, options: &ConvOptions<2>) -> FlexTensor {
    match x.dtype() {
        DType::F32 => input_backward_typed::<f32>(x, weight, output_grad, options),
        DType::F64 => input_backward_typed::<f64>(x, weight, output_grad, options),
        dtype => via_f32(dtype, x, weight, output_grad, options, input_backward_typed::<f32>),
    }
}
