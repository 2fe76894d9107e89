//! A grid of samples with their labels drawn on them (gaze arrows, head axes), so that a reader
//! can check by eye that labels match images.

use std::io::Cursor;
use std::path::Path;

use image::{Rgb, RgbImage, imageops};
use imageproc::drawing::draw_line_segment_mut;

use crate::data::Dataset;
use crate::data::headpose::rotation;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::task::Task;

/// Side of one tile in the grid, in pixels.
pub const TILE: u32 = 160;

fn thick_line(img: &mut RgbImage, a: (f32, f32), b: (f32, f32), colour: Rgb<u8>) {
    for (dx, dy) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)] {
        draw_line_segment_mut(img, (a.0 + dx, a.1 + dy), (b.0 + dx, b.1 + dy), colour);
    }
}

fn arrow(img: &mut RgbImage, from: (f32, f32), to: (f32, f32), colour: Rgb<u8>) {
    thick_line(img, from, to, colour);
    let (dx, dy) = (to.0 - from.0, to.1 - from.1);
    let len = (dx * dx + dy * dy).sqrt();
    if len < 4.0 {
        return;
    }
    let (ux, uy) = (dx / len, dy / len);
    let head = 8.0f32.min(len * 0.4);
    for side in [-1.0f32, 1.0] {
        let tip = (to.0 - head * (ux - side * 0.5 * uy), to.1 - head * (uy + side * 0.5 * ux));
        thick_line(img, to, tip, colour);
    }
}

/// Draws sample `i`'s label on an upscaled copy of its image.
pub fn labelled_tile(ds: &Dataset, task: Task, i: usize) -> RgbImage {
    let mut tile = imageops::resize(&ds.images[i], TILE, TILE, imageops::FilterType::Nearest);
    let c = (TILE as f32 / 2.0, TILE as f32 / 2.0);
    let len = TILE as f32 * 0.4;
    let label = ds.label(i);
    match task {
        Task::Gaze => {
            // The gaze direction projected onto the image: (cos p · sin y, −sin p).
            let (p, y) = (label[0], label[1]);
            let to = (c.0 + len * p.cos() * y.sin(), c.1 - len * p.sin());
            arrow(&mut tile, c, to, Rgb([255, 230, 0]));
        }
        Task::HeadPose => {
            let r = rotation(label[0], label[1], label[2]);
            // Head axes: right (red), up (green), forward out of the face (blue).
            let axes = [([1.0, 0.0, 0.0], Rgb([230, 30, 30])), ([0.0, -1.0, 0.0], Rgb([30, 200, 30])), ([0.0, 0.0, -1.0], Rgb([40, 90, 255]))];
            for (axis, colour) in axes {
                let v = [0, 1, 2].map(|k| r[k][0] * axis[0] + r[k][1] * axis[1] + r[k][2] * axis[2]);
                arrow(&mut tile, c, (c.0 + len * v[0], c.1 + len * v[1]), colour);
            }
        }
        Task::Landmarks => {
            // Eyes red, nose green, mouth corners blue: small crosses.
            let colours = [Rgb([230, 30, 30]), Rgb([230, 30, 30]), Rgb([30, 200, 30]), Rgb([40, 90, 255]), Rgb([40, 90, 255])];
            for (point, colour) in label.chunks_exact(2).zip(colours) {
                let (x, y) = (point[0] * TILE as f32, point[1] * TILE as f32);
                thick_line(&mut tile, (x - 3.0, y), (x + 3.0, y), colour);
                thick_line(&mut tile, (x, y - 3.0), (x, y + 3.0), colour);
            }
        }
        Task::Classification { classes } => {
            // The class as a bar along the bottom edge: class c of C fills (c + 1) / C of it.
            let class = crate::metrics::argmax(label);
            let end = (class + 1) as f32 / classes as f32 * (TILE - 4) as f32;
            let y = TILE as f32 - 4.0;
            thick_line(&mut tile, (2.0, y), (2.0 + end, y), Rgb([255, 230, 0]));
        }
    }
    tile
}

/// Writes the first `count` samples as a grid with `columns` tiles per row.
pub fn write_label_grid(ds: &Dataset, task: Task, count: usize, columns: usize, path: &Path) -> Result<()> {
    let count = count.min(ds.len());
    if count == 0 || columns == 0 {
        return Err(Error::Data("nothing to draw".into()));
    }
    let rows = count.div_ceil(columns);
    let cols = columns.min(count);
    let gap = 4;
    let mut grid = RgbImage::from_pixel(
        cols as u32 * (TILE + gap) + gap,
        rows as u32 * (TILE + gap) + gap,
        Rgb([255, 255, 255]),
    );
    for i in 0..count {
        let (x, y) = ((i % cols) as u32, (i / cols) as u32);
        imageops::replace(&mut grid, &labelled_tile(ds, task, i), (gap + x * (TILE + gap)) as i64, (gap + y * (TILE + gap)) as i64);
    }
    let mut bytes = Vec::new();
    grid.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::Image { path: path.to_path_buf(), message: e.to_string() })?;
    write_atomic(path, &bytes)
}
