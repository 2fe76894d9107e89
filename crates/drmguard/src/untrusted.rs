//! Everything drmguard reads from a user, as one function of raw bytes per reader: the fuzz
//! targets (`fuzz/`, cargo-fuzz) and the corpus replay test (`tests/fuzz_corpus.rs`) call
//! [`read`]. Bad input must come back as the reader's typed error; a panic (caught or not), an
//! abort, an allocation over 2 GiB or more than 10 s on one input is a bug (docs/fuzzing.md).

use std::path::Path;

use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::device::DeviceKind;
use crate::error::{Error, Result};
use crate::model_file::import;
use crate::models::Regressor;

/// The readers, one fuzz target each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Reader {
    /// An ONNX graph through its card, then one forward and one backward pass on a fixed input.
    Onnx,
    /// A PyTorch state dict (`.pth`: the pickle subset) through its card.
    StateDict,
    /// A safetensors file through its card.
    Safetensors,
    /// A model card (TOML), through the card's validation.
    Card,
    /// A data folder's `labels.csv`, beside one valid image.
    Labels,
    /// One image of a data folder (PNG, JPEG, BMP), as the folder loader decodes it.
    Image,
    /// An IDX file (Fashion-MNIST's format), gzipped or not.
    Idx,
}

impl Reader {
    pub const ALL: [Reader; 7] = [Reader::Onnx, Reader::StateDict, Reader::Safetensors, Reader::Card, Reader::Labels, Reader::Image, Reader::Idx];

    /// The folder name of the reader's corpus and fuzz target.
    pub fn name(self) -> &'static str {
        match self {
            Reader::Onnx => "onnx",
            Reader::StateDict => "state_dict",
            Reader::Safetensors => "safetensors",
            Reader::Card => "card",
            Reader::Labels => "labels",
            Reader::Image => "image",
            Reader::Idx => "idx",
        }
    }
}

/// Side of the images the fixed cards and folders declare: small, so that one input runs fast.
const SIDE: u32 = 32;

/// A card for weights `file` of a head-pose model in torchvision's layout.
fn card_for(file: &str) -> String {
    format!(
        "task = \"headpose\"\nweights = \"{file}\"\n\n[input]\nsize = {SIDE}\nchannel_order = \"rgb\"\nrange = [0.0, 1.0]\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n\n[output]\nnames = [\"yaw\", \"pitch\", \"roll\"]\nunits = \"degrees\"\n"
    )
}

/// One valid `SIDE`² PNG, for the folder beside a fuzzed `labels.csv`.
fn valid_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(SIDE, SIDE, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 128]));
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).expect("encoding a PNG in memory");
    bytes
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|cause| Error::Write { path, cause })
}

/// Reads `bytes` as `reader` does, in a fresh temporary folder with whatever fixed files the
/// reader needs beside them; the folder is removed afterwards.
pub fn read(reader: Reader, bytes: &[u8]) -> Result<()> {
    let dir = tempfile::tempdir().map_err(|cause| Error::Write { path: std::env::temp_dir(), cause })?;
    let dir = dir.path();
    let device = DeviceKind::Cpu.device()?;
    let model = |weights: &str| -> Result<()> {
        write(dir, weights, bytes)?;
        write(dir, "card.toml", card_for(weights).as_bytes())?;
        let (model, _) = import::load(&dir.join("card.toml"), &device)?;
        if reader == Reader::Onnx {
            // The graph runs at scan time, with gradients to the input: both must fail cleanly.
            let ad = device.clone().autodiff();
            let model = model.fork(&ad);
            let x = Tensor::<4>::zeros([1, 3, SIDE as usize, SIDE as usize], &ad).require_grad();
            let y = model.forward(x.clone());
            let grads = y.sum().backward();
            x.grad(&grads).ok_or_else(|| Error::Numerical("no gradient reached the input".into()))?;
        }
        Ok(())
    };
    match reader {
        Reader::Onnx => model("model.onnx"),
        Reader::StateDict => model("model.pth"),
        Reader::Safetensors => model("model.safetensors"),
        Reader::Card => {
            write(dir, "card.toml", bytes)?;
            import::read_card(&dir.join("card.toml")).map(|_| ())
        }
        Reader::Labels => {
            write(dir, "a.png", &valid_png())?;
            write(dir, crate::data::folder::LABELS_FILE, bytes)?;
            crate::data::folder::load(dir, SIDE, None).map(|_| ())
        }
        Reader::Image => {
            write(dir, "x.img", bytes)?;
            write(dir, crate::data::folder::LABELS_FILE, b"file,yaw,pitch,roll\nx.img,0.1,0.2,0.3\n")?;
            crate::data::folder::load(dir, SIDE, None).map(|_| ())
        }
        Reader::Idx => crate::data::fashion::parse_idx(bytes, "the input").map(|_| ()),
    }
}

/// For the fuzz targets, once: every panic aborts, so that one a reader catches is still a crash.
pub fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{info}");
        std::process::abort();
    }));
}
