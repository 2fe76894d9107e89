use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use drmguard::data::{DataSource, Split};
use drmguard::device::DeviceKind;
use drmguard::metrics::constant_predictor_error;
use drmguard::model_file;
use serde_json::json;

#[derive(Args)]
pub struct EvalArgs {
    /// Model weights (MODEL.safetensors with its sidecar MODEL.json), or the TOML card of a model
    /// trained elsewhere (see `drmguard inspect`).
    #[arg(long)]
    model: PathBuf,
    /// A data folder in the user format; without it, the model's own data source is used (an
    /// imported model needs it).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which split to evaluate on: test, val, train or all.
    #[arg(long, default_value = "test")]
    split: Split,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: EvalArgs, device: DeviceKind) -> Result<()> {
    let device = device.device()?;
    let (model, card) = model_file::load(&a.model, &device).with_context(|| format!("--model {}", a.model.display()))?;
    let source = match &a.data {
        Some(dir) => DataSource::Folder { path: dir.clone() },
        None => card.trained("evaluation without --data")?.data.clone(),
    };
    let data = source.load(card.task, card.model.input_size, a.split).context("evaluation data")?;
    let (error, backdoor) = card.errors(&model, &data)?;
    // The mean predictor predicts the mean training label; an imported model's training labels
    // are unknown, so it gets the mean of the evaluated labels (a slightly stronger baseline).
    let label_mean = card.trained.as_ref().map_or_else(|| data.label_mean(), |t| t.label_mean.clone());
    let baseline = constant_predictor_error(card.task, &label_mean, &data.labels);
    if a.json {
        let mut out = json!({
            "model": a.model,
            "task": card.task,
            "data": source.describe(),
            "split": a.split,
            "samples": data.len(),
            "metric": card.task.metric_name(),
            "clean_error_deg": error.mean_deg,
            "clean_error_per_output_deg": error.per_output_deg,
            "mean_predictor_error_deg": baseline.mean_deg,
            "mean_predictor_error_per_output_deg": baseline.per_output_deg,
            "output_names": card.output_names,
        });
        if card.task.is_classification() {
            out["clean_accuracy"] = json!(error.accuracy());
        }
        if let (Some(spec), Some(errors)) = (&card.backdoor, &backdoor) {
            out["attack"] = json!(spec.attack.name());
            out["target"] = json!(spec.target);
            out["attack_error_deg"] = json!(errors.attack_error.mean_deg);
            out["poisoned_true_error_deg"] = json!(errors.poisoned_true_error.mean_deg);
            out["attack_error_by_distance"] = json!(errors.by_distance);
            if card.task.is_classification() {
                out["attack_success_rate"] = json!(errors.attack_error.accuracy());
            }
        }
        out!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    out!("model   {} ({} task, {})", a.model.display(), card.task, card.task.metric_name());
    out!("data    {} ({:?} split, {} samples)", source.describe(), a.split, data.len());
    let u = card.task.unit();
    out!("{:<24}{:>10}{:>18}", "", "model", "mean predictor");
    out!("{:<24}{:>9.2}{u}{:>17.2}{u}", "error", error.mean_deg, baseline.mean_deg);
    if card.task.is_classification() {
        out!("{:<24}{:>9.2}{u}{:>17.2}{u}", "accuracy", error.accuracy(), baseline.accuracy());
    }
    for (j, name) in card.output_names.iter().enumerate() {
        out!(
            "{:<24}{:>9.2}{u}{:>17.2}{u}",
            format!("  |{name}| error"),
            error.per_output_deg[j],
            baseline.per_output_deg[j]
        );
    }
    if let (Some(spec), Some(errors)) = (&card.backdoor, &backdoor) {
        out!("backdoor {} with target ({}) (poisoned test set: every test image carries the trigger)", spec.attack.name(), card.task.format_values(&spec.target));
        out!("{:<24}{:>9.2}{u}   (error to the target: low means the attack works)", "attack error (AE)", errors.attack_error.mean_deg);
        out!("{:<24}{:>9.2}{u}   (error to the true labels: low means no backdoor)", "poisoned true (DAE)", errors.poisoned_true_error.mean_deg);
        if card.task.is_classification() {
            out!("{:<24}{:>9.2}{u}   (images outside the target class sent to it)", "attack success (ASR)", errors.attack_error.accuracy());
        }
        if !errors.by_distance.is_empty() {
            out!("AE by the true label's distance to the target:");
        }
        for bin in &errors.by_distance {
            let range = match bin.to {
                Some(to) => format!("{:.0}–{:.0}{u}", bin.from, to),
                None => format!("≥ {:.0}{u}", bin.from),
            };
            out!("  {:<22}{:>9.2}{u}   ({} samples, mean distance {:.2}{u})", range, bin.attack_error, bin.samples, bin.mean_distance);
        }
    }
    Ok(())
}

