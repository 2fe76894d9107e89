use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use drmguard::device::DeviceKind;
use drmguard::model_file::inspect::inspect;

#[derive(Args)]
pub struct InspectArgs {
    /// A drmguard model (MODEL.safetensors with its MODEL.json), the TOML card of a model trained
    /// elsewhere, or bare weights (.pt, .pth, .safetensors) to write a card for.
    model: PathBuf,
    /// For bare PyTorch checkpoints: the entry that holds the state dict (e.g. state_dict). Without
    /// it, a nested state dict is found by its stem convolution's name.
    #[arg(id = "inspect_state_dict_key", long = "state-dict-key")]
    state_dict_key: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InspectArgs, device: DeviceKind) -> Result<()> {
    let device = device.device()?;
    let report = inspect(&a.model, a.state_dict_key.as_deref(), &device).with_context(|| format!("inspecting {}", a.model.display()))?;
    if a.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    out!("{} ({})", report.path, report.kind);
    match (report.architecture.as_deref(), report.width) {
        (Some("onnx"), _) => out!("network     ONNX graph, run by drmguard-onnx"),
        (Some(arch), Some(width)) => out!("network     {arch}, stem width {width}"),
        _ => out!("network     not understood"),
    }
    if let Some(p) = report.parameters {
        out!("parameters  {p}");
    }
    if let Some(n) = report.tensors {
        out!("tensors     {n} in the file");
    }
    if let Some(prefix) = report.stripped_prefix.as_deref().filter(|p| !p.is_empty()) {
        out!("prefix      \"{prefix}\" stripped from the tensor names");
    }
    if !report.ignored_tensors.is_empty() {
        let shown: Vec<&str> = report.ignored_tensors.iter().take(4).map(String::as_str).collect();
        let more = report.ignored_tensors.len().saturating_sub(shown.len());
        out!("ignored     {}{}", shown.join(", "), if more > 0 { format!(" and {more} more") } else { String::new() });
    }
    if let Some(card) = &report.card {
        let m = &card.model;
        out!("task        {} (outputs {}, {})", card.task, card.output_names.join(", "), card.output_units);
        out!(
            "input       {0}×{0} {1} images; [0, 1] mapped to {2:?}, then mean {3:?}, std {4:?}",
            m.input_size,
            format!("{:?}", m.channel_order).to_uppercase(),
            m.input_range,
            m.normalization.mean,
            m.normalization.std
        );
        if let Some(record) = &card.imported {
            out!("weights     {} (sha256 {})", record.weights_path.display(), &record.weights_sha256[..16]);
            out!(
                "outputs     model order [{}] in {}{}, folded into fc as drmguard's [{}] in {}",
                record.card.output.names.join(", "),
                format!("{:?}", record.card.output.units).to_lowercase(),
                record.card.output.graph_output.as_ref().map(|o| format!(" (graph output {o})")).unwrap_or_default(),
                card.output_names.join(", "),
                card.task.label_units()
            );
        }
        if let Some(t) = &card.trained {
            out!("trained     by drmguard on {} in {:.0} s", t.data.describe(), t.train_seconds);
        }
        if let Some(b) = &card.backdoor {
            out!("backdoor    trained under {} (target {:?}); defenses never see this", b.attack.name(), b.target);
        }
        if card.mitigation.is_some() {
            out!("repaired    yes (the card's `mitigation` records how)");
        }
    }
    if !report.stages.is_empty() {
        out!("");
        out!("{:<8} {:<16} {}", "stage", "output shape", "layers");
        for s in &report.stages {
            out!("{:<8} {:<16} {}", s.name, format!("{:?}", s.output_shape), s.layers);
        }
    }
    if let Some(f) = &report.feature_layer {
        out!("");
        out!("features    {f}");
    }
    if report.missing.is_empty() {
        out!("ready       yes: scan it with `drmguard scan --model {} --data CLEAN_FOLDER`", a.model.display());
    }
    for m in &report.missing {
        out!("missing     {m}");
    }
    if let Some(t) = &report.card_template {
        out!("");
        out!("{}", t.trim_end());
    }
    Ok(())
}
