//! Shared pieces of the synthetic renderers: seeded randomness, colours, textured backgrounds,
//! supersampled rasterisation and sensor noise.

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

pub type Rgb = [f32; 3];

/// The generator of sample `index` of a dataset drawn with `seed`: the same (seed, index) always
/// gives the same sample, independent of how many samples are drawn or in which order.
pub fn sample_rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(index);
    rng
}

pub fn uniform(rng: &mut impl Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

pub fn lerp(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

pub fn scale(c: Rgb, s: f32) -> Rgb {
    [c[0] * s, c[1] * s, c[2] * s]
}

/// A skin tone from very light to very dark, with a little hue jitter.
pub fn skin_tone(rng: &mut impl Rng) -> Rgb {
    let t = rng.random::<f32>();
    let base = lerp([0.95, 0.80, 0.69], [0.33, 0.21, 0.14], t);
    [
        base[0] * uniform(rng, 0.95, 1.05),
        base[1] * uniform(rng, 0.95, 1.05),
        base[2] * uniform(rng, 0.93, 1.07),
    ]
}

/// Hair and brow colours: black, browns, blond, red, grey.
pub fn hair_colour(rng: &mut impl Rng) -> Rgb {
    const PALETTE: [Rgb; 6] = [
        [0.06, 0.05, 0.05],
        [0.22, 0.14, 0.08],
        [0.40, 0.27, 0.15],
        [0.72, 0.60, 0.38],
        [0.55, 0.22, 0.10],
        [0.62, 0.62, 0.62],
    ];
    let c = PALETTE[rng.random_range(0..PALETTE.len())];
    scale(c, uniform(rng, 0.85, 1.15))
}

/// A random background: a colour gradient plus a few random sinusoidal stripes and blobs, so that
/// no single background pixel value tells anything about the label.
#[derive(Debug, Clone)]
pub struct Background {
    base: Rgb,
    gradient: Rgb,
    angle: f32,
    waves: Vec<(f32, f32, f32, f32, Rgb)>, // frequency, direction, phase, amplitude, colour
    blobs: Vec<(f32, f32, f32, Rgb)>,      // centre u, v, radius, colour
}

impl Background {
    pub fn random(rng: &mut impl Rng) -> Self {
        let base = [rng.random(), rng.random(), rng.random()];
        let gradient = [
            uniform(rng, -0.3, 0.3),
            uniform(rng, -0.3, 0.3),
            uniform(rng, -0.3, 0.3),
        ];
        let waves = (0..rng.random_range(1..4))
            .map(|_| {
                (
                    uniform(rng, 3.0, 25.0),
                    uniform(rng, 0.0, std::f32::consts::PI),
                    uniform(rng, 0.0, 6.3),
                    uniform(rng, 0.02, 0.12),
                    [rng.random(), rng.random(), rng.random()],
                )
            })
            .collect();
        let blobs = (0..rng.random_range(0..5))
            .map(|_| {
                (
                    rng.random(),
                    rng.random(),
                    uniform(rng, 0.05, 0.25),
                    [rng.random(), rng.random(), rng.random()],
                )
            })
            .collect();
        Background {
            base,
            gradient,
            angle: uniform(rng, 0.0, 6.3),
            waves,
            blobs,
        }
    }

    pub fn at(&self, u: f32, v: f32) -> Rgb {
        let t = u * self.angle.cos() + v * self.angle.sin();
        let mut c = [
            self.base[0] + self.gradient[0] * t,
            self.base[1] + self.gradient[1] * t,
            self.base[2] + self.gradient[2] * t,
        ];
        for &(freq, dir, phase, amp, col) in &self.waves {
            let s = (freq * (u * dir.cos() + v * dir.sin()) + phase).sin() * amp;
            for k in 0..3 {
                c[k] += s * (col[k] - 0.5) * 2.0;
            }
        }
        for &(bu, bv, r, col) in &self.blobs {
            let d2 = ((u - bu).powi(2) + (v - bv).powi(2)) / (r * r);
            if d2 < 1.0 {
                c = lerp(c, col, 0.6 * (1.0 - d2));
            }
        }
        c
    }
}

/// Renders `shade(u, v)` over a `size`×`size` image, u and v in [0, 1] with v pointing down,
/// averaging `ss`×`ss` samples per pixel, then adds Gaussian sensor noise of deviation `noise`.
pub fn rasterise(
    size: u32,
    ss: u32,
    noise: f32,
    rng: &mut impl Rng,
    shade: impl Fn(f32, f32) -> Rgb,
) -> RgbImage {
    let mut img = RgbImage::new(size, size);
    let inv = 1.0 / size as f32;
    let normal = Normal::new(0.0f32, noise.max(0.0)).expect("a finite, non-negative deviation");
    for py in 0..size {
        for px in 0..size {
            let mut acc = [0.0f32; 3];
            for sy in 0..ss {
                for sx in 0..ss {
                    let u = (px as f32 + (sx as f32 + 0.5) / ss as f32) * inv;
                    let v = (py as f32 + (sy as f32 + 0.5) / ss as f32) * inv;
                    let c = shade(u, v);
                    acc.iter_mut().zip(c).for_each(|(a, c)| *a += c);
                }
            }
            let n = (ss * ss) as f32;
            let pixel = img.get_pixel_mut(px, py);
            for (out, a) in pixel.0.iter_mut().zip(acc) {
                let value = a / n + normal.sample(rng);
                *out = (value.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    img
}

/// Supersampling factor: enough for smooth edges on small images, cheaper on large ones.
pub fn supersampling(size: u32) -> u32 {
    if size <= 96 { 3 } else if size <= 160 { 2 } else { 1 }
}
