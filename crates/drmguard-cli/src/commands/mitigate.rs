use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use drmguard::defenses::unlearn::{UnlearnConfig, unlearn};
use drmguard::defenses::{DrmGuard, DrmGuardConfig};
use drmguard::device::DeviceKind;
use drmguard::model_file;
use serde_json::json;

use super::scan::DefenseInput;

#[derive(Args)]
pub struct MitigateArgs {
    #[command(flatten)]
    input: DefenseInput,
    #[command(flatten)]
    drmguard: DrmGuardConfig,
    #[command(flatten)]
    unlearn: UnlearnConfig,
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
    let started = Instant::now();
    let (suspect, clean, card) = a.input.load(&device)?;
    let (detection, reversal) = DrmGuard::new(a.drmguard.clone()).detect(&suspect, &clean, &device)?;
    tracing::info!(score = detection.score, backdoored = detection.backdoored, "reverse engineering done; unlearning");
    let (model, summary) = unlearn(&suspect, &clean, &reversal.generator, &a.unlearn, reversal.config.seed, &device)?;
    let record = json!({
        "defense": "drmguard",
        "source_model": a.input.model,
        "detection": {
            "backdoored": detection.backdoored,
            "score": detection.score,
            "threshold": detection.threshold,
            "estimated_target": reversal.summary.estimated_target,
            "rav": reversal.summary.rav,
        },
        "drmguard_config": reversal.config,
        "unlearn_config": a.unlearn,
        "unlearn": summary,
        "clean_set": clean.describe(),
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let mut repaired = card.clone();
    repaired.drmguard_version = env!("CARGO_PKG_VERSION").to_string();
    repaired.mitigation = Some(record.clone());
    model_file::save(&a.out, &model, &repaired).with_context(|| format!("--out {}", a.out.display()))?;
    let report_path = a.out.with_extension("report.json");
    drmguard::io::write_json(&report_path, &record)?;
    out!(
        "{}: reversed trigger I(f) = {:.4} ({}), unlearned on {} clean + {} reversed images in {:.0} s; wrote {} and {}",
        a.input.model.display(),
        detection.score,
        if detection.backdoored { "flagged as backdoored" } else { "not flagged; unlearned anyway" },
        summary.clean_images,
        summary.reversed_images,
        started.elapsed().as_secs_f64(),
        a.out.display(),
        report_path.display()
    );
    Ok(())
}
