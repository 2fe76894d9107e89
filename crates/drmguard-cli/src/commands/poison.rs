use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use drmguard::attacks::poison_dataset;
use drmguard::data::folder;
use drmguard::device::DeviceKind;
use drmguard::io::write_json;
use drmguard::task::Task;
use serde_json::json;

use super::attack_args::AttackArgs;

#[derive(Args)]
pub struct PoisonArgs {
    /// Task whose labels the folder holds: gaze or headpose.
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
    #[command(flatten)]
    attack: AttackArgs,
}

pub fn run(a: PoisonArgs, device: DeviceKind) -> Result<()> {
    let Some(spec) = a.attack.spec(a.task, a.seed)? else {
        bail!("--attack is required (one of: badnets, blended, wanet)");
    };
    let data = folder::load(&a.data, a.image_size, Some(a.task.output_names())).context("--data")?;
    let plan = spec.plan(a.task, a.image_size, data.len())?;
    let poisoned = poison_dataset(&data, &plan, false, &device.device()?)?;
    folder::write(&poisoned, &a.out).with_context(|| format!("--out {}", a.out.display()))?;
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
