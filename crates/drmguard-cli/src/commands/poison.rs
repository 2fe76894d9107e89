use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use drmguard::attacks::{AttackKind, poison_dataset};
use drmguard::data::folder;
use drmguard::device::DeviceKind;
use drmguard::io::write_json;
use drmguard::model_file;
use drmguard::task::Task;
use serde_json::json;

use super::attack_args::AttackArgs;

#[derive(Args)]
pub struct PoisonArgs {
    /// Task whose labels the folder holds: gaze, headpose, landmarks, fashion or classification:N
    /// (a `class` column).
    #[arg(long)]
    task: Task,
    /// The clean data folder (user format).
    #[arg(long)]
    data: PathBuf,
    /// Side at which images are read and poisoned, divisible by 8.
    #[arg(long, default_value_t = 64)]
    image_size: u32,
    /// Seed of the trigger's random parts and of the choice of poisoned samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder for the poisoned copy (created; its parent must exist).
    #[arg(long)]
    out: PathBuf,
    /// A benign model of the task to perturb against (needed by --attack clean-label only),
    /// e.g. one trained on the clean folder with `drmguard train`.
    #[arg(long)]
    surrogate: Option<PathBuf>,
    #[command(flatten)]
    attack: AttackArgs,
}

pub fn run(a: PoisonArgs, device: DeviceKind) -> Result<()> {
    let Some(spec) = a.attack.spec(a.task, a.seed)? else {
        bail!("--attack is required (one of: {})", AttackKind::NAMES.join(", "));
    };
    let device = device.device()?;
    let surrogate = match (&a.surrogate, spec.attack.needs_surrogate()) {
        (Some(path), true) => {
            let (model, card) =
                model_file::load(path, &device).with_context(|| format!("--surrogate {}", path.display()))?;
            if card.task != a.task || card.model.input_size != a.image_size {
                bail!(
                    "--surrogate {}: a {} model on {}×{} images, but the data are {} at {}×{}",
                    path.display(),
                    card.task,
                    card.model.input_size,
                    card.model.input_size,
                    a.task,
                    a.image_size,
                    a.image_size
                );
            }
            Some(model)
        }
        (None, true) => bail!("--attack {} needs --surrogate MODEL (a benign model of the task)", spec.attack.name()),
        (Some(_), false) => bail!("--surrogate is only used by --attack clean-label"),
        (None, false) => None,
    };
    let data = folder::load(&a.data, a.image_size, Some(&a.task.label_columns())).and_then(|d| d.labelled_for(a.task)).context("--data")?;
    let plan = spec.plan(a.task, a.image_size, &data)?;
    let data = spec.prepare_training_set(a.task, &plan, data, surrogate.as_ref(), &device)?;
    let poisoned = poison_dataset(&data, &plan, false, &device)?;
    folder::write(&poisoned.class_column(a.task), &a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let mut files: Vec<&str> = plan.poisoned.iter().map(|&i| data.names[i].as_str()).collect();
    files.sort_unstable();
    write_json(&a.out.join("poison.json"), &json!({ "backdoor": spec, "poisoned_files": files }))?;
    out!(
        "wrote {} samples to {}, {} of them poisoned by {} with target {:?} (listed in poison.json)",
        poisoned.len(),
        a.out.display(),
        files.len(),
        spec.attack.name(),
        spec.target
    );
    Ok(())
}
