//! Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 70 000 grey 28 × 28 images of ten kinds of
//! clothing, read from the IDX files that Debian's `dataset-fashion-mnist` package installs
//! (`apt-get install dataset-fashion-mnist`), gzipped or not, and exported to the user data
//! format with a `class` column (`drmguard data fashion`). Nothing is downloaded.

use std::io::Read;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{GrayImage, RgbImage};

use super::{Dataset, validate_image_size};
use crate::error::{Error, Result};

/// Where Debian's package puts the files.
pub const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The classes, in the order of their labels 0–9.
pub const CLASSES: [&str; 10] = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"];

/// The label column of the exported `labels.csv`.
pub const CLASS_COLUMN: &str = "class";

/// The side of the images in the files.
const SIDE: usize = 28;

/// The most bytes one decompressed file may hold: the training images are 47 MB.
const MAX_FILE_BYTES: u64 = 128 << 20;

/// The two parts the dataset ships as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// 60 000 images.
    Train,
    /// 10 000 images.
    Test,
}

impl Part {
    fn prefix(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Test => "t10k",
        }
    }
}

/// An IDX array of unsigned bytes: its dimensions and its values, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses an IDX file of unsigned bytes (type code 0x08), gzipped or not.
pub fn parse_idx(bytes: &[u8], what: &str) -> Result<Idx> {
    let bad = |why: String| Error::Data(format!("{what} is not an IDX file of bytes: {why}"));
    let raw;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("its gzip stream is broken ({e})")))?;
        if out.len() as u64 > MAX_FILE_BYTES {
            return Err(bad(format!("it decompresses to more than {MAX_FILE_BYTES} bytes")));
        }
        raw = out;
        raw.as_slice()
    } else {
        bytes
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("it does not start with the magic number 00 00".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("its values have type code {:#04x}, not 0x08 (unsigned bytes)", bytes[2])));
    }
    let rank = bytes[3] as usize;
    if rank == 0 || bytes.len() < 4 + 4 * rank {
        return Err(bad(format!("its header declares {rank} dimensions and ends early")));
    }
    let dims: Vec<usize> = bytes[4..4 + 4 * rank].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let count = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| bad(format!("its dimensions {dims:?} overflow")))?;
    let data = &bytes[4 + 4 * rank..];
    if data.len() != count {
        return Err(bad(format!("its dimensions {dims:?} need {count} values, it holds {}", data.len())));
    }
    Ok(Idx { dims, data: data.to_vec() })
}

/// The path of a part's images or labels in `dir`: the `.gz` file Debian installs, or the same
/// name uncompressed.
fn file_in(dir: &Path, part: Part, kind: &str) -> Result<PathBuf> {
    let name = format!("{}-{kind}-idx{}-ubyte", part.prefix(), if kind == "images" { 3 } else { 1 });
    let candidates = [dir.join(format!("{name}.gz")), dir.join(&name)];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| Error::Read {
        path: candidates[0].clone(),
        cause: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no Fashion-MNIST {kind} here (install Debian's dataset-fashion-mnist, which puts them in {DEBIAN_DIR})"),
        ),
    })
}

fn read_idx(path: &Path) -> Result<Idx> {
    let bytes = std::fs::read(path).map_err(|cause| Error::Read { path: path.to_path_buf(), cause })?;
    parse_idx(&bytes, &path.display().to_string())
}

/// The images and labels of one part, checked against each other.
pub fn read_part(dir: &Path, part: Part) -> Result<(Idx, Idx)> {
    let (images, labels) = (read_idx(&file_in(dir, part, "images")?)?, read_idx(&file_in(dir, part, "labels")?)?);
    check_pair(&images, &labels)?;
    Ok((images, labels))
}

fn check_pair(images: &Idx, labels: &Idx) -> Result<()> {
    if images.dims.len() != 3 || images.dims[1] != SIDE || images.dims[2] != SIDE {
        return Err(Error::Data(format!("Fashion-MNIST images must be n × {SIDE} × {SIDE}, these are {:?}", images.dims)));
    }
    if labels.dims != [images.dims[0]] {
        return Err(Error::Data(format!("{} images but labels of shape {:?}", images.dims[0], labels.dims)));
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l as usize >= CLASSES.len()) {
        return Err(Error::Data(format!("a label of {bad}: Fashion-MNIST has classes 0–9")));
    }
    Ok(())
}

/// The first `limit` images of `part` (all of them without a limit) as a dataset with one
/// `class` output: grey images repeated over the three channels and resized to `image_size`
/// (bilinear), named `PART-NNNNN.png`.
pub fn load(dir: &Path, part: Part, limit: Option<usize>, image_size: u32) -> Result<Dataset> {
    validate_image_size(image_size)?;
    let (images, labels) = read_part(dir, part)?;
    to_dataset(&images, &labels, part, limit, image_size)
}

fn to_dataset(images: &Idx, labels: &Idx, part: Part, limit: Option<usize>, image_size: u32) -> Result<Dataset> {
    let n = limit.map_or(images.dims[0], |l| l.min(images.dims[0]));
    if n == 0 {
        return Err(Error::invalid("sample count", "0 (need at least one image)"));
    }
    let mut ds = Dataset { output_names: vec![CLASS_COLUMN.into()], image_size, names: Vec::with_capacity(n), images: Vec::with_capacity(n), labels: Vec::with_capacity(n) };
    let plane = SIDE * SIDE;
    for i in 0..n {
        let grey = GrayImage::from_raw(SIDE as u32, SIDE as u32, images.data[i * plane..(i + 1) * plane].to_vec()).expect("28 × 28 bytes");
        // Image sides are multiples of 8, so 28 pixels are always resized.
        let grey = image::imageops::resize(&grey, image_size, image_size, FilterType::Triangle);
        let rgb = RgbImage::from_fn(image_size, image_size, |x, y| {
            let v = grey.get_pixel(x, y).0[0];
            image::Rgb([v, v, v])
        });
        ds.names.push(format!("{}-{i:05}.png", part.prefix()));
        ds.images.push(rgb);
        ds.labels.push(labels.data[i] as f32);
    }
    Ok(ds)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IDX file of bytes with dimensions `dims` and values `data`.
    pub(crate) fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend(d.to_be_bytes());
        }
        out.extend(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn idx_files_parse_plain_or_gzipped_and_bad_ones_are_named() {
        let plain = idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let expected = Idx { dims: vec![2, 3], data: vec![1, 2, 3, 4, 5, 6] };
        assert_eq!(parse_idx(&plain, "x").unwrap(), expected);
        assert_eq!(parse_idx(&gzip(&plain), "x").unwrap(), expected);
        let short = idx(&[2, 3], &[1, 2, 3]);
        assert!(parse_idx(&short, "x").unwrap_err().to_string().contains("need 6 values"));
        let mut floats = plain.clone();
        floats[2] = 0x0d;
        assert!(parse_idx(&floats, "x").unwrap_err().to_string().contains("type code"));
        assert!(parse_idx(&[0, 0, 8], "x").is_err());
        assert!(parse_idx(&gzip(&plain)[..10], "x").unwrap_err().to_string().contains("gzip"));
        // Dimensions whose product overflows are refused before anything is allocated.
        assert!(parse_idx(&idx(&[u32::MAX, u32::MAX, u32::MAX], &[]), "x").is_err());
    }

    #[test]
    fn a_part_becomes_a_dataset_with_a_class_column() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..3 * SIDE * SIDE).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("t10k-images-idx3-ubyte.gz"), gzip(&idx(&[3, 28, 28], &pixels))).unwrap();
        std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), idx(&[3], &[9, 0, 4])).unwrap();
        let ds = load(dir.path(), Part::Test, Some(2), 32).unwrap();
        assert_eq!((ds.len(), ds.output_names.clone(), ds.labels.clone()), (2, vec!["class".to_string()], vec![9.0, 0.0]));
        assert_eq!(ds.names, ["t10k-00000.png", "t10k-00001.png"]);
        assert_eq!(ds.images[0].dimensions(), (32, 32));
        assert!(ds.images[0].pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]), "grey over three channels");
        assert!(load(dir.path(), Part::Test, None, 28).is_err(), "28 is not a side the models take");
        // The training part is missing: the message says where Debian puts it.
        let err = load(dir.path(), Part::Train, None, 32).unwrap_err().to_string();
        assert!(err.contains("dataset-fashion-mnist"), "{err}");
        // Labels outside 0–9, or fewer labels than images, are refused.
        std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), idx(&[3], &[9, 10, 4])).unwrap();
        assert!(load(dir.path(), Part::Test, None, 32).unwrap_err().to_string().contains("classes 0–9"));
        std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), idx(&[2], &[9, 1])).unwrap();
        assert!(load(dir.path(), Part::Test, None, 32).is_err());
    }
}
