use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use drmguard::data::DataSource;
use drmguard::io::ensure_parent_exists;

use super::attack_args::AttackArgs;
use drmguard::device::DeviceKind;
use drmguard::model_file;
use drmguard::task::Task;
use drmguard::train::{Profile, TrainConfig};
use drmguard::pipeline::TrainJob;

#[derive(Args)]
pub struct TrainArgs {
    /// Task: gaze, headpose, landmarks, fashion (Fashion-MNIST's ten classes, read from Debian's
    /// dataset-fashion-mnist package), or classification:N with --data (a `class` column).
    #[arg(long)]
    task: Task,
    /// A data folder in the user format; without it, built-in synthetic data are drawn.
    #[arg(long)]
    data: Option<PathBuf>,
    /// smoke (seconds, for tests), small (CPU default: ResNet-18 width 16, 64×64),
    /// paper (ResNet-18 width 64, 224×224, for GPUs).
    #[arg(long, default_value = "small")]
    profile: Profile,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Synthetic samples to draw (all splits); ignored with --data.
    #[arg(long)]
    samples: Option<usize>,
    /// Input side in pixels, divisible by 8.
    #[arg(long)]
    image_size: Option<u32>,
    /// ResNet-18 width multiplier (64 = torchvision).
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (cosine-decayed to 1% of it).
    #[arg(long)]
    lr: Option<f64>,
    /// Output weights, MODEL.safetensors; the sidecar MODEL.json is written beside it.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    attack: AttackArgs,
}

pub fn run(a: TrainArgs, device: DeviceKind) -> Result<()> {
    let mut config = TrainConfig::new(a.task, a.profile, a.seed);
    if let Some(v) = a.epochs {
        config.epochs = v;
    }
    if let Some(v) = a.samples {
        config.samples = v;
    }
    if let Some(v) = a.image_size {
        config.image_size = v;
    }
    if let Some(v) = a.batch_size {
        config.batch_size = v;
    }
    if let Some(v) = a.lr {
        config.learning_rate = v;
        config.min_learning_rate = v * 0.01;
    }
    if let Some(w) = a.width {
        config.architecture = config.architecture.with_width(w);
    }
    config.validate().context("training options")?;
    let backdoor_spec = a.attack.spec(a.task, config.seed)?;
    if a.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("--out {}: the model file must end in .safetensors", a.out.display());
    }
    // Fail before hours of training, not after.
    ensure_parent_exists(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let source = match &a.data {
        Some(dir) => DataSource::Folder { path: std::fs::canonicalize(dir).with_context(|| format!("--data {}", dir.display()))? },
        None => DataSource::builtin(a.task, config.samples, config.seed, config.image_size)?,
    };
    let device = device.device()?;
    let job = TrainJob { config, source, backdoor: backdoor_spec };
    let (model, card) = job.run(&device).context("training")?;
    model_file::save(&a.out, &model, &card)?;
    let trained = card.trained("training")?;
    let last = trained.history.last().map_or(f64::NAN, |r| r.val_error_deg);
    let kind = card.backdoor.as_ref().map_or("benign".to_string(), |b| format!("{}-backdoored", b.attack.name()));
    let validation = if a.task.is_classification() {
        format!("validation accuracy {:.2}%", 100.0 - last)
    } else {
        format!("validation error {last:.2}{}", a.task.unit())
    };
    out!(
        "trained {kind} {} model in {:.0} s: {validation}; wrote {} and {}",
        a.task,
        trained.train_seconds,
        a.out.display(),
        model_file::card_path(&a.out).display()
    );
    Ok(())
}
