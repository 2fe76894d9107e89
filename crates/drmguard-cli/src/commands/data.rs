use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use drmguard::attacks::AttackKind;
use drmguard::data::{self, Split, fashion, folder};
use drmguard::figures::grid::write_label_grid;
use drmguard::report::triggers::write_trigger_figure;
use drmguard::task::Task;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write a built-in synthetic dataset in the user format (DIR/labels.csv plus PNG images).
    Synth(SynthArgs),
    /// Write Fashion-MNIST, read from the files of Debian's dataset-fashion-mnist package, in the
    /// user format with a `class` column (0–9).
    Fashion(FashionArgs),
    /// Draw a grid of samples with their labels (gaze arrows, head axes) into a PNG.
    Show(ShowArgs),
    /// Draw what each attack (default settings) does to one built-in image: clean, poisoned, and
    /// the difference amplified.
    Triggers(TriggersArgs),
}

#[derive(Args)]
pub struct TriggersArgs {
    #[arg(long)]
    task: Task,
    #[arg(long, default_value_t = 64)]
    image_size: u32,
    /// Which built-in sample to draw.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// Seed of the built-in data and of the triggers' random parts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Factor applied to the absolute difference.
    #[arg(long, default_value_t = 10.0)]
    amplify: f32,
    /// Attacks to show, comma-separated (default: all). ISSBA and Input-Aware train their
    /// networks on first use (minutes; cached afterwards).
    #[arg(id = "triggers_attacks", long = "attacks", value_delimiter = ',')]
    attacks: Option<Vec<String>>,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Built-in task: gaze, headpose or landmarks.
    #[arg(long)]
    task: Task,
    /// Number of samples (all splits together).
    #[arg(long)]
    n: usize,
    /// Image side in pixels, divisible by 8.
    #[arg(long, default_value_t = 64)]
    image_size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (created; its parent must exist).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct FashionArgs {
    /// Folder of the IDX files (gzipped or not), as `apt-get install dataset-fashion-mnist`
    /// installs them.
    #[arg(long, default_value = fashion::DEBIAN_DIR)]
    dir: PathBuf,
    /// Which part of the dataset to export.
    #[arg(long, value_enum, default_value_t = fashion::Part::Train)]
    part: fashion::Part,
    /// Export the first N images of the part (default: all of them).
    #[arg(long)]
    n: Option<usize>,
    /// Image side in pixels, divisible by 8 (the 28-pixel originals are resized).
    #[arg(long, default_value_t = 32)]
    image_size: u32,
    /// Output folder (created; its parent must exist).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct ShowArgs {
    /// A data folder in the user format.
    #[arg(long)]
    data: PathBuf,
    /// Task whose labels the folder holds.
    #[arg(long)]
    task: Task,
    /// Side at which images are read, divisible by 8.
    #[arg(long, default_value_t = 64)]
    image_size: u32,
    /// How many samples to draw.
    #[arg(long, default_value_t = 16)]
    count: usize,
    #[arg(long, default_value_t = 8)]
    columns: usize,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Synth(a) => {
            let ds = data::synthesize(a.task, a.n, a.image_size, a.seed).context("--n / --image-size")?;
            folder::write(&ds, &a.out).with_context(|| format!("--out {}", a.out.display()))?;
            let test = ds.split(Split::Test).len();
            let val = ds.split(Split::Val).len();
            out!(
                "wrote {} {} samples ({}×{}) to {} (splits by file name: {} train, {val} val, {test} test)",
                ds.len(),
                a.task,
                a.image_size,
                a.image_size,
                a.out.display(),
                ds.len() - val - test
            );
            Ok(())
        }
        DataCommand::Fashion(a) => {
            let ds = fashion::load(&a.dir, a.part, a.n, a.image_size).with_context(|| format!("--dir {}", a.dir.display()))?;
            folder::write(&ds, &a.out).with_context(|| format!("--out {}", a.out.display()))?;
            out!("wrote {} Fashion-MNIST images ({}×{}, classes 0–9: {}) to {}", ds.len(), a.image_size, a.image_size, fashion::CLASSES.join(", "), a.out.display());
            Ok(())
        }
        DataCommand::Triggers(a) => {
            let ds = data::synthesize(a.task, a.index + 1, a.image_size, a.seed)?;
            let kinds = match &a.attacks {
                Some(names) => names.iter().map(|n| AttackKind::by_name(n)).collect::<std::result::Result<Vec<_>, _>>().context("--attacks")?,
                None => AttackKind::defaults(),
            };
            let attacks: Vec<_> = kinds.into_iter().map(|k| (k, a.seed)).collect();
            write_trigger_figure(a.task, &ds, a.index, &attacks, a.amplify, &a.out)?;
            let names: Vec<&str> = attacks.iter().map(|(k, _)| k.name()).collect();
            out!(
                "wrote {} (rows: {}; columns: clean, poisoned, |difference| × {})",
                a.out.display(),
                names.join(", "),
                a.amplify
            );
            Ok(())
        }
        DataCommand::Show(a) => {
            let ds = folder::load(&a.data, a.image_size, Some(&a.task.label_columns()))?.labelled_for(a.task)?;
            write_label_grid(&ds, a.task, a.count, a.columns, &a.out)?;
            out!("wrote {}", a.out.display());
            Ok(())
        }
    }
}
