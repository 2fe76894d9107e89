//! A figure of what each attack does to an image: clean, poisoned, and the difference amplified.

use std::io::Cursor;
use std::path::Path;

use burn::tensor::Device;
use image::{Rgb, RgbImage, imageops};

use crate::attacks::{AttackKind, to_images};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::task::Task;

/// Side of one tile in the figure, in pixels.
const TILE: u32 = 160;

/// Writes one row per attack: clean image, poisoned image, |poisoned − clean| × `amplify`.
pub fn write_trigger_figure(
    task: Task,
    data: &Dataset,
    index: usize,
    attacks: &[(AttackKind, u64)],
    amplify: f32,
    path: &Path,
) -> Result<()> {
    if index >= data.len() || attacks.is_empty() {
        return Err(Error::Data("nothing to draw".into()));
    }
    let device = Device::flex();
    let gap = 4;
    let mut fig =
        RgbImage::from_pixel(3 * (TILE + gap) + gap, attacks.len() as u32 * (TILE + gap) + gap, Rgb([255, 255, 255]));
    let clean = &data.images[index];
    for (row, (kind, seed)) in attacks.iter().enumerate() {
        let attack = kind.build(task, data.image_size, *seed)?;
        let (x, _) = data.batch(&[index], &device);
        let poisoned = to_images(attack.apply(x))?.remove(0);
        let diff = RgbImage::from_fn(clean.width(), clean.height(), |px, py| {
            let (a, b) = (clean.get_pixel(px, py).0, poisoned.get_pixel(px, py).0);
            Rgb([0, 1, 2].map(|c| ((a[c] as f32 - b[c] as f32).abs() * amplify).min(255.0) as u8))
        });
        for (col, img) in [clean, &poisoned, &diff].into_iter().enumerate() {
            let tile = imageops::resize(img, TILE, TILE, imageops::FilterType::Nearest);
            let (x, y) = (gap + col as u32 * (TILE + gap), gap + row as u32 * (TILE + gap));
            imageops::replace(&mut fig, &tile, x as i64, y as i64);
        }
    }
    let mut bytes = Vec::new();
    fig.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::Image { path: path.to_path_buf(), message: e.to_string() })?;
    write_atomic(path, &bytes)
}
