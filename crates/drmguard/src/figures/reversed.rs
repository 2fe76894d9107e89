//! A figure of what a reverse-engineering defense did: clean images, their reversed versions, and
//! |reversed − clean| as a heat map (mean over channels, black → red → yellow → white).

use std::io::Cursor;
use std::path::Path;

use image::{Rgb, RgbImage, imageops};

use crate::error::{Error, Result};
use crate::io::write_atomic;

const TILE: u32 = 128;
const GAP: u32 = 4;

/// Heat-map colour of `t` in [0, 1].
fn heat(t: f32) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0) * 3.0;
    let c = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    Rgb([c(t), c(t - 1.0), c(t - 2.0)])
}

/// |a − b| averaged over channels, scaled so that `full_scale` maps to white.
pub fn difference_heat_map(a: &RgbImage, b: &RgbImage, full_scale: f32) -> RgbImage {
    RgbImage::from_fn(a.width(), a.height(), |x, y| {
        let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
        let d = (0..3).map(|c| (p[c] as f32 - q[c] as f32).abs()).sum::<f32>() / (3.0 * 255.0);
        heat(d / full_scale)
    })
}

/// Three rows (clean, reversed, heat map of the difference) with one column per image pair.
/// `full_scale` is the mean absolute difference (in [0, 1]) shown as white.
pub fn reversal_figure(clean: &[RgbImage], reversed: &[RgbImage], full_scale: f32) -> Result<RgbImage> {
    if clean.is_empty() || clean.len() != reversed.len() {
        return Err(Error::Data(format!("a reversal figure needs matching images ({} clean, {} reversed)", clean.len(), reversed.len())));
    }
    let cols = clean.len() as u32;
    let mut fig = RgbImage::from_pixel(cols * (TILE + GAP) + GAP, 3 * (TILE + GAP) + GAP, Rgb([255, 255, 255]));
    for (col, (c, r)) in clean.iter().zip(reversed).enumerate() {
        let heat_map = difference_heat_map(c, r, full_scale);
        for (row, img) in [c, r, &heat_map].into_iter().enumerate() {
            let tile = imageops::resize(img, TILE, TILE, imageops::FilterType::Nearest);
            let (x, y) = (GAP + col as u32 * (TILE + GAP), GAP + row as u32 * (TILE + GAP));
            imageops::replace(&mut fig, &tile, x as i64, y as i64);
        }
    }
    Ok(fig)
}

/// A `side`×`side` map (row-major, e.g. DRMGuard's momentum attention map or a reversed mask) as
/// a heat map scaled to its maximum, enlarged to a readable size.
pub fn map_figure(values: &[f32], side: u32) -> Result<RgbImage> {
    if side == 0 || values.len() != (side * side) as usize {
        return Err(Error::Data(format!("a {side}×{side} map needs {} values, got {}", side * side, values.len())));
    }
    let max = values.iter().copied().fold(0.0f32, f32::max).max(1e-12);
    let map = RgbImage::from_fn(side, side, |x, y| heat(values[(y * side + x) as usize] / max));
    Ok(imageops::resize(&map, 3 * TILE, 3 * TILE, imageops::FilterType::Nearest))
}

/// Writes `image` as a PNG file, atomically.
pub fn write_png(image: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::Image { path: path.to_path_buf(), message: e.to_string() })?;
    write_atomic(path, &bytes)
}
