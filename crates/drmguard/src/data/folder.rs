//! The user data format: `DIR/labels.csv` (`file,<output names…>`, one row per image) beside the
//! images, in any format the `image` crate reads. Reading checks every row and names the line at
//! fault; writing never leaves a partial `labels.csv`.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use super::{Dataset, validate_image_size};
use crate::error::{Error, Result};
use crate::io::{ensure_parent_exists, write_atomic};

pub const LABELS_FILE: &str = "labels.csv";

/// Reads a folder. Images are resized to `image_size` if needed. When `expected_outputs` is given,
/// the CSV header must name exactly those outputs, in that order.
pub fn load(dir: &Path, image_size: u32, expected_outputs: Option<&[String]>) -> Result<Dataset> {
    validate_image_size(image_size)?;
    if !dir.is_dir() {
        return Err(Error::Read {
            path: dir.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such data folder"),
        });
    }
    let csv_path = dir.join(LABELS_FILE);
    let text = std::fs::read(&csv_path).map_err(|cause| Error::Read { path: csv_path.clone(), cause })?;
    let csv_err = |line: u64, message: String| Error::Csv { path: csv_path.clone(), line, message };
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(Cursor::new(text));

    let header = reader.headers().map_err(|e| csv_err(1, e.to_string()))?.clone();
    if header.len() < 2 || &header[0] != "file" {
        return Err(csv_err(1, "the header must be `file,<output names…>`".into()));
    }
    let output_names: Vec<String> = header.iter().skip(1).map(str::to_string).collect();
    if let Some(expected) = expected_outputs
        && output_names != expected
    {
        return Err(csv_err(
            1,
            format!("outputs are [{}], this task needs [{}]", output_names.join(", "), expected.join(", ")),
        ));
    }
    let dim = output_names.len();

    let mut ds = Dataset { output_names, image_size, names: vec![], images: vec![], labels: vec![] };
    let mut seen = HashSet::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            csv_err(line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != dim + 1 {
            return Err(csv_err(line, format!("expected {} columns, found {}", dim + 1, record.len())));
        }
        let name = record[0].to_string();
        if name.is_empty() {
            return Err(csv_err(line, "empty file name".into()));
        }
        // A hostile labels.csv must not make drmguard read files outside its folder.
        if !Path::new(&name).components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir)) {
            return Err(csv_err(line, format!("'{name}' is not a path inside the folder")));
        }
        if !seen.insert(name.clone()) {
            return Err(csv_err(line, format!("'{name}' is listed twice")));
        }
        for (j, field) in record.iter().skip(1).enumerate() {
            let value: f32 = field
                .parse()
                .map_err(|_| csv_err(line, format!("'{field}' in column '{}' is not a number", &header[j + 1])))?;
            if !value.is_finite() {
                return Err(csv_err(line, format!("'{field}' in column '{}' is not finite", &header[j + 1])));
            }
            ds.labels.push(value);
        }
        let path = dir.join(&name);
        if !path.is_file() {
            return Err(csv_err(line, format!("image '{}' does not exist", path.display())));
        }
        ds.images.push(read_image(&path, image_size)?);
        ds.names.push(name);
    }
    if ds.is_empty() {
        return Err(csv_err(1, "no samples listed".into()));
    }
    Ok(ds)
}

fn read_image(path: &Path, size: u32) -> Result<image::RgbImage> {
    let img = image::ImageReader::open(path)
        .map_err(|cause| Error::Read { path: path.to_path_buf(), cause })?
        .with_guessed_format()
        .map_err(|cause| Error::Read { path: path.to_path_buf(), cause })?
        .decode()
        .map_err(|e| Error::Image { path: path.to_path_buf(), message: e.to_string() })?
        .to_rgb8();
    if img.width() == size && img.height() == size {
        Ok(img)
    } else {
        Ok(image::imageops::resize(&img, size, size, FilterType::Triangle))
    }
}

/// Writes `ds` to `dir` (created if missing; its parent must exist): PNG images, then `labels.csv`.
pub fn write(ds: &Dataset, dir: &Path) -> Result<()> {
    ensure_parent_exists(dir)?;
    std::fs::create_dir_all(dir).map_err(|cause| Error::Write { path: dir.to_path_buf(), cause })?;
    for (name, img) in ds.names.iter().zip(&ds.images) {
        let path: PathBuf = dir.join(name);
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| Error::Image { path: path.clone(), message: e.to_string() })?;
        write_atomic(&path, &bytes)?;
    }
    let mut out = csv::Writer::from_writer(Vec::new());
    let header: Vec<&str> = std::iter::once("file").chain(ds.output_names.iter().map(String::as_str)).collect();
    let csv_path = dir.join(LABELS_FILE);
    let werr = |e: csv::Error| Error::Write { path: csv_path.clone(), cause: std::io::Error::other(e) };
    out.write_record(&header).map_err(werr)?;
    for i in 0..ds.len() {
        let row = std::iter::once(ds.names[i].clone()).chain(ds.label(i).iter().map(|v| v.to_string()));
        out.write_record(row).map_err(werr)?;
    }
    let bytes = out.into_inner().map_err(|e| Error::Write { path: csv_path.clone(), cause: e.into_error() })?;
    write_atomic(&csv_path, &bytes)
}
