//! Datasets: the built-in synthetic tasks and users' image folders, both in one format
//! (`DIR/labels.csv` with `file,<output names…>` plus the images), with deterministic splits.

pub mod fashion;
pub mod folder;
pub mod gaze;
pub mod headpose;
pub mod raster;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::task::Task;

/// Smallest and largest accepted image side.
pub const MIN_IMAGE_SIZE: u32 = 16;
pub const MAX_IMAGE_SIZE: u32 = 1024;

/// Checks an image side: the generators downsample three times, so it must be divisible by 8.
pub fn validate_image_size(size: u32) -> Result<()> {
    if !size.is_multiple_of(8) || !(MIN_IMAGE_SIZE..=MAX_IMAGE_SIZE).contains(&size) {
        return Err(Error::invalid(
            "image size",
            format!("{size} (must be divisible by 8 and within {MIN_IMAGE_SIZE}..={MAX_IMAGE_SIZE})"),
        ));
    }
    Ok(())
}

/// Which part of a dataset to use. Membership depends only on the sample's file name, so a split is
/// the same whether the data come from the generator, from a folder, or from a reordered folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
    All,
}

impl Split {
    /// Share of samples in validation and test, each.
    pub const HOLDOUT_PERCENT: u64 = 10;

    fn of_name(name: &str) -> Split {
        // FNV-1a: tiny, stable across platforms and Rust versions (unlike `DefaultHasher`).
        let hash = name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        match hash % 100 {
            h if h < Self::HOLDOUT_PERCENT => Split::Test,
            h if h < 2 * Self::HOLDOUT_PERCENT => Split::Val,
            _ => Split::Train,
        }
    }

    fn contains(self, name: &str) -> bool {
        self == Split::All || Split::of_name(name) == self
    }
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            "all" => Ok(Split::All),
            _ => Err(Error::UnknownName { what: "split", name: s.into(), expected: "train, val, test, all".into() }),
        }
    }
}

/// Labelled square RGB images held in memory as 8-bit pixels, exactly as they would be on disk.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub output_names: Vec<String>,
    pub image_size: u32,
    pub names: Vec<String>,
    pub images: Vec<RgbImage>,
    /// Row-major, `len() × dim()`.
    pub labels: Vec<f32>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.output_names.len()
    }

    pub fn label(&self, i: usize) -> &[f32] {
        &self.labels[i * self.dim()..(i + 1) * self.dim()]
    }

    /// The samples whose names fall in `split`.
    pub fn split(&self, split: Split) -> Dataset {
        let keep: Vec<usize> = (0..self.len()).filter(|&i| split.contains(&self.names[i])).collect();
        self.subset(&keep)
    }

    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            output_names: self.output_names.clone(),
            image_size: self.image_size,
            names: indices.iter().map(|&i| self.names[i].clone()).collect(),
            images: indices.iter().map(|&i| self.images[i].clone()).collect(),
            labels: indices.iter().flat_map(|&i| self.label(i).to_vec()).collect(),
        }
    }

    /// Per-output mean of the labels.
    pub fn label_mean(&self) -> Vec<f32> {
        let n = self.len().max(1) as f64;
        (0..self.dim())
            .map(|j| ((0..self.len()).map(|i| self.label(i)[j] as f64).sum::<f64>() / n) as f32)
            .collect()
    }

    /// SHA-256 over names, labels and pixels: identifies the data a model was trained on.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.output_names.join(",").as_bytes());
        for i in 0..self.len() {
            h.update(self.names[i].as_bytes());
            for v in self.label(i) {
                h.update(v.to_le_bytes());
            }
            h.update(self.images[i].as_raw());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// This dataset of class indices (one `class` label per image) with one-hot label rows for
    /// `task`'s classes; a regression task's data are returned as they are.
    pub fn labelled_for(self, task: Task) -> Result<Dataset> {
        let Some(classes) = task.classes() else {
            return Ok(self);
        };
        if self.dim() != 1 {
            return Err(Error::Data(format!(
                "a classifier's labels are one `{}` column, these data have [{}]",
                crate::task::CLASS_COLUMN,
                self.output_names.join(", ")
            )));
        }
        let mut labels = vec![0.0f32; self.len() * classes];
        for (i, &class) in self.labels.iter().enumerate() {
            if class.fract() != 0.0 || !(0.0..classes as f32).contains(&class) {
                return Err(Error::Data(format!(
                    "{}: class {class} is not a whole number in 0–{} ({classes} classes)",
                    self.names[i],
                    classes - 1
                )));
            }
            labels[i * classes + class as usize] = 1.0;
        }
        Ok(Dataset { output_names: task.output_names(), labels, ..self })
    }

    /// The inverse of [`Self::labelled_for`]: one-hot label rows back to one `class` column, as a
    /// classifier's `labels.csv` holds them; a regression task's data are returned as they are.
    pub fn class_column(&self, task: Task) -> Dataset {
        let Some(classes) = task.classes() else {
            return self.clone();
        };
        let labels = self.labels.chunks_exact(classes).map(|row| crate::task::argmax(row) as f32).collect();
        Dataset { output_names: task.label_columns(), labels, ..self.clone() }
    }

    /// A batch as tensors: images `[n, 3, S, S]` in [0, 1] and labels `[n, dim]`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<2>) {
        let s = self.image_size as usize;
        let mut pixels = Vec::with_capacity(indices.len() * 3 * s * s);
        for &i in indices {
            let raw = self.images[i].as_raw();
            for c in 0..3 {
                pixels.extend(raw.iter().skip(c).step_by(3).map(|&p| p as f32 / 255.0));
            }
        }
        let labels: Vec<f32> = indices.iter().flat_map(|&i| self.label(i).to_vec()).collect();
        let images = Tensor::from_data(TensorData::new(pixels, [indices.len(), 3, s, s]), device);
        let labels = Tensor::from_data(TensorData::new(labels, [indices.len(), self.dim()]), device);
        (images, labels)
    }
}

/// Converts images `[n, 3, S, S]` in [0, 1] back to 8-bit RGB images.
pub fn to_images(x: Tensor<4>) -> Result<Vec<image::RgbImage>> {
    let [n, c, h, w] = x.dims();
    let values = x
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| Error::Numerical(format!("cannot read images back from a tensor: {e:?}")))?;
    Ok((0..n)
        .map(|i| {
            image::RgbImage::from_fn(w as u32, h as u32, |px, py| {
                let at = |ch: usize| values[((i * c + ch) * h + py as usize) * w + px as usize];
                image::Rgb([0, 1, 2].map(|ch| (at(ch).clamp(0.0, 1.0) * 255.0).round() as u8))
            })
        })
        .collect())
}

/// Where a model's data came from: enough to draw the same samples again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSource {
    /// The built-in generator of `task`, samples `0..n` of `seed`.
    Synthetic { task: Task, n: usize, seed: u64, image_size: u32 },
    /// A user folder in the `labels.csv` format.
    Folder { path: std::path::PathBuf },
    /// The first `n` images of Fashion-MNIST's training part, read from the IDX files in `path`
    /// (the built-in data of [`Task::FASHION`]).
    #[serde(rename = "fashion-mnist")]
    FashionMnist { path: std::path::PathBuf, n: usize },
}

fn no_builtin_classes(task: Task) -> Error {
    if task == Task::FASHION {
        return Error::Data("Fashion-MNIST is read from Debian's package, not rendered (`drmguard data fashion` exports it)".into());
    }
    Error::Data(format!(
        "there are no built-in data for {task}: pass a data folder with a `class` column, or use Fashion-MNIST's ten classes (task `fashion`)"
    ))
}

/// Draws samples `0..n` of the built-in `task` with `seed`, rendering on all cores.
pub fn synthesize(task: Task, n: usize, image_size: u32, seed: u64) -> Result<Dataset> {
    synthesize_split(task, n, image_size, seed, Split::All)
}

/// The samples of `0..n` that fall in `split`, drawn exactly as [`synthesize`] would draw them.
pub fn synthesize_split(task: Task, n: usize, image_size: u32, seed: u64, split: Split) -> Result<Dataset> {
    validate_image_size(image_size)?;
    if n == 0 {
        return Err(Error::invalid("sample count", "0 (need at least one sample)"));
    }
    if task.is_classification() {
        return Err(no_builtin_classes(task));
    }
    let width = n.to_string().len().max(6);
    let (indices, names): (Vec<usize>, Vec<String>) = (0..n)
        .map(|i| (i, format!("{i:0width$}.png")))
        .filter(|(_, name)| split.contains(name))
        .unzip();
    let render = |i: usize| match task {
        Task::Gaze => gaze::sample(seed, i as u64, image_size),
        Task::HeadPose => headpose::sample(seed, i as u64, image_size),
        Task::Landmarks => headpose::landmark_sample(seed, i as u64, image_size),
        Task::Classification { .. } => unreachable!("refused above"),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(indices.len()).max(1);
    let chunk = indices.len().div_ceil(threads).max(1);
    let mut samples: Vec<(RgbImage, Vec<f32>)> = Vec::with_capacity(indices.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = indices
            .chunks(chunk)
            .map(|part| {
                let render = &render;
                scope.spawn(move || part.iter().map(|&i| render(i)).collect::<Vec<_>>())
            })
            .collect();
        for h in handles {
            samples.extend(h.join().expect("renderer threads do not panic"));
        }
    });
    let mut ds = Dataset {
        output_names: task.output_names(),
        image_size,
        names,
        images: Vec::with_capacity(samples.len()),
        labels: Vec::with_capacity(samples.len() * task.output_dim()),
    };
    for (img, label) in samples {
        ds.images.push(img);
        ds.labels.extend(label);
    }
    Ok(ds)
}

impl DataSource {
    /// The built-in data of `task`: `n` samples of its renderer drawn with `seed`, or for
    /// Fashion-MNIST's classes the first `n` training images from Debian's package
    /// ([`fashion::DEBIAN_DIR`]; `seed` and `image_size` are then not needed to draw them again).
    pub fn builtin(task: Task, n: usize, seed: u64, image_size: u32) -> Result<DataSource> {
        if task == Task::FASHION {
            Ok(DataSource::FashionMnist { path: fashion::DEBIAN_DIR.into(), n })
        } else if task.is_classification() {
            Err(no_builtin_classes(task))
        } else {
            Ok(DataSource::Synthetic { task, n, seed, image_size })
        }
    }

    /// Loads `split` of this source for a model of `task` on `image_size`×`image_size` images.
    /// Built-in data are rendered at `image_size` directly (a sample is the same scene at any size).
    pub fn load(&self, task: Task, image_size: u32, split: Split) -> Result<Dataset> {
        let ds = match self {
            DataSource::Synthetic { task: t, n, seed, .. } => {
                if *t != task {
                    return Err(Error::Data(format!("the built-in data are for task {t}, the model is for {task}")));
                }
                synthesize_split(*t, *n, image_size, *seed, split)?
            }
            DataSource::Folder { path } => {
                folder::load(path, image_size, Some(&task.label_columns()))?.labelled_for(task)?.split(split)
            }
            DataSource::FashionMnist { path, n } => {
                if task != Task::FASHION {
                    return Err(Error::Data(format!("Fashion-MNIST has ten classes, the model is for {task}")));
                }
                fashion::load(path, fashion::Part::Train, Some(*n), image_size)?.labelled_for(task)?.split(split)
            }
        };
        if ds.is_empty() {
            return Err(Error::Data(format!("the {split:?} split of {} is empty", self.describe())));
        }
        Ok(ds)
    }

    pub fn describe(&self) -> String {
        match self {
            DataSource::Synthetic { task, n, seed, image_size } => {
                format!("built-in {task} data ({n} samples, seed {seed}, {image_size}×{image_size})")
            }
            DataSource::Folder { path } => path.display().to_string(),
            DataSource::FashionMnist { path, n } => format!("the first {n} Fashion-MNIST training images in {}", path.display()),
        }
    }
}
