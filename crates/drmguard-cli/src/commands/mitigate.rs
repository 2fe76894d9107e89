use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use drmguard::defenses::{MitigatorConfigs, MitigatorKind};
use drmguard::device::DeviceKind;
use drmguard::model_file;

use super::scan::DefenseInput;

#[derive(Args)]
pub struct MitigateArgs {
    #[command(flatten)]
    input: DefenseInput,
    /// Mitigation to run.
    #[arg(long, value_enum, default_value_t = MitigatorKind::Drmguard)]
    defense: MitigatorKind,
    #[command(flatten)]
    configs: MitigatorConfigs,
    /// Repaired weights, CLEAN.safetensors; its sidecar CLEAN.json and the report
    /// CLEAN.report.json are written beside it.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: MitigateArgs, device: DeviceKind) -> Result<()> {
    let device = device.device()?;
    if a.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("--out {} must end in .safetensors", a.out.display());
    }
    drmguard::io::ensure_parent_exists(&a.out).context("--out")?;
    a.configs.validate(a.defense).with_context(|| format!("{} mitigation settings", a.defense))?;
    let started = Instant::now();
    let able = |task| MitigatorKind::ALL.iter().filter(|k| k.handles(task)).map(ToString::to_string).collect();
    let (suspect, clean, card) = a.input.load(&device, &a.defense.to_string(), |task| a.defense.handles(task), able)?;
    let mitigator = a.configs.build(a.defense);
    let repair = mitigator.mitigate(&suspect, &clean, a.input.seed, &device).with_context(|| format!("{} mitigation", a.defense))?;
    let mut record = repair.record;
    if let Some(fields) = record.as_object_mut() {
        fields.insert("source_model".into(), serde_json::json!(a.input.model));
        fields.insert("clean_set".into(), serde_json::json!(clean.describe()));
        fields.insert("elapsed_s".into(), serde_json::json!(started.elapsed().as_secs_f64()));
    }
    let mut repaired = card.clone();
    repaired.drmguard_version = env!("CARGO_PKG_VERSION").to_string();
    repaired.mitigation = Some(record.clone());
    model_file::save(&a.out, &repair.model, &repaired).with_context(|| format!("--out {}", a.out.display()))?;
    let report_path = a.out.with_extension("report.json");
    drmguard::io::write_json_timed(&report_path, &record)?;
    out!(
        "{}: repaired by {} in {:.0} s; wrote {} and {}",
        a.input.model.display(),
        a.defense,
        started.elapsed().as_secs_f64(),
        a.out.display(),
        report_path.display()
    );
    Ok(())
}
