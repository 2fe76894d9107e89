use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use drmguard::burn::tensor::Device;
use clap::Args;
use drmguard::defenses::drmguard::Reversal;
use drmguard::defenses::{CleanSet, DefenseKind, Detection, DrmGuard, DrmGuardConfig, Suspect};
use drmguard::device::DeviceKind;
use drmguard::io::write_atomic;
use drmguard::model_file::{self, ModelCard};
use drmguard::report::reversed::{write_map_figure, write_reversal_figure};
use serde_json::json;

/// What every defense command needs: the suspect model and the defender's clean images.
#[derive(Args, Clone)]
pub struct DefenseInput {
    /// Model weights (MODEL.safetensors with its sidecar MODEL.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The defender's clean images (a folder in the user format). Without it, for a model
    /// trained on built-in data, a fresh sample is drawn with a seed disjoint from training.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Size of the fresh built-in clean set (default: 5% of the training set, at least 500).
    #[arg(long = "clean-size")]
    pub clean_size: Option<usize>,
}

impl DefenseInput {
    /// Loads the model as a defense may see it (its card without the attack) and the clean set.
    pub fn load(&self, device: &Device) -> Result<(Suspect, CleanSet, ModelCard)> {
        let (model, card) =
            model_file::load(&self.model, device).with_context(|| format!("--model {}", self.model.display()))?;
        let suspect = Suspect::new(model, &card);
        let clean = match &self.data {
            Some(dir) => CleanSet::from_folder(dir, &suspect).with_context(|| format!("--data {}", dir.display()))?,
            None => {
                let n = self.clean_size.unwrap_or_else(|| CleanSet::default_size(&suspect));
                CleanSet::fresh_builtin(&suspect, n).context("the defender's clean set")?
            }
        };
        Ok((suspect, clean, card))
    }
}

#[derive(Args)]
pub struct ScanArgs {
    #[command(flatten)]
    input: DefenseInput,
    /// Defense to run.
    #[arg(long, value_enum, default_value_t = DefenseKind::Drmguard)]
    defense: DefenseKind,
    #[command(flatten)]
    drmguard: DrmGuardConfig,
    /// Output folder for report.json, report.md and reversed.png (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Exit with status 2 when the model is flagged as backdoored.
    #[arg(long = "fail-on-backdoor")]
    fail_on_backdoor: bool,
}

/// Exit status of a scan that flagged the model under `--fail-on-backdoor`.
pub const BACKDOOR_EXIT: u8 = 2;

pub fn run(a: ScanArgs, device: DeviceKind) -> Result<Option<u8>> {
    let device = device.device()?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create --out {}", a.out.display()))?;
    let (suspect, clean, _) = a.input.load(&device)?;
    let detection = match a.defense {
        DefenseKind::Drmguard => {
            let (detection, reversal) = DrmGuard::new(a.drmguard.clone()).detect(&suspect, &clean, &device)?;
            write_drmguard_outputs(&a.input.model, &suspect, &clean, &detection, &reversal, &a.out, &device)?;
            detection
        }
    };
    out!(
        "{}: {} (I(f) = {:.4}, ε = {}, margin {:+.4}), {:.0} s; report in {}",
        a.input.model.display(),
        if detection.backdoored { "BACKDOORED" } else { "no backdoor found" },
        detection.score,
        detection.threshold,
        detection.margin,
        detection.elapsed_s,
        a.out.display()
    );
    Ok((a.fail_on_backdoor && detection.backdoored).then_some(BACKDOOR_EXIT))
}

/// Writes `report.json`, `report.md`, `config.json` and `reversed.png` into `out`.
pub fn write_drmguard_outputs(
    model_path: &Path,
    suspect: &Suspect,
    clean: &CleanSet,
    detection: &Detection,
    reversal: &Reversal,
    out: &Path,
    device: &Device,
) -> Result<()> {
    let s = &reversal.summary;
    let report = json!({
        "model": model_path,
        "task": suspect.task,
        "output_names": suspect.output_names,
        "defense": detection.defense,
        "backdoored": detection.backdoored,
        "score": detection.score,
        "threshold": detection.threshold,
        "margin": detection.margin,
        "estimated_target": s.estimated_target,
        "estimated_target_deg": s.estimated_target.iter().map(|v| v.to_degrees()).collect::<Vec<_>>(),
        "target_spread_deg": s.output_std_deg,
        "clean_output_spread_deg": s.clean_output_std_deg,
        "rav": s.rav,
        "rav_per_output": s.rav_per_output,
        "steps": s.steps,
        "seconds_per_step": s.seconds_per_step,
        "elapsed_s": detection.elapsed_s,
        "seed": reversal.config.seed,
        "clean_set": clean.describe(),
        "clean_images": clean.len(),
        "config": reversal.config,
        "history": s.history,
    });
    drmguard::io::write_json(&out.join("report.json"), &report)?;
    drmguard::io::write_json(&out.join("config.json"), &reversal.config)?;

    let shown: Vec<usize> = (0..clean.len().min(8)).collect();
    let (originals, reversed) = reversal.image_pairs(clean, &shown, device)?;
    // Full scale at 4 ε: differences of the size that decides the verdict stay visible.
    write_reversal_figure(&originals, &reversed, 4.0 * reversal.config.epsilon as f32, &out.join("reversed.png"))?;
    if let Some(map) = &reversal.attention {
        write_map_figure(map, suspect.image_size(), &out.join("attention.png"))?;
    }

    let deg = |v: &[f32]| v.iter().map(|x| format!("{:.2}°", x.to_degrees())).collect::<Vec<_>>().join(", ");
    let spread = |v: &[f64]| v.iter().map(|x| format!("{x:.2}°")).collect::<Vec<_>>().join(", ");
    let md = format!(
        "# drmguard scan: {model}\n\n\
         **Verdict: {verdict}.** I(f) = mean |G(x) − x| = **{score:.4}**, threshold ε = {eps} \
         (backdoored iff I(f) < ε; margin {margin:+.4}).\n\n\
         | | value |\n|---|---|\n\
         | task | {task} ({names}) |\n\
         | defense | DRMGuard, {gen} generator (width {width}), r_f {freg:?}, MTR {mtr:?}, λ1 = {l1}, λ2 = {l2} |\n\
         | clean set | {clean} ({n} images) |\n\
         | estimated target (mean of f(G(x))) | {target} |\n\
         | spread of f(G(x)) / of f(x) | {spread} / {clean_spread} |\n\
         | RAV of the reversed images | {rav:.4} |\n\
         | steps | {steps} ({sps:.3} s/step) |\n\
         | elapsed | {elapsed:.0} s |\n\n\
         ![clean, reversed, |difference|](reversed.png)\n\n\
         Rows: clean images, G(x), and |G(x) − x| (white = {full:.2}). A backdoored model needs only a \
         small, localised change (its trigger) to send every image to one output; a benign model needs \
         a large one.\n{attention}",
        model = model_path.display(),
        verdict = if detection.backdoored { "backdoored" } else { "no backdoor found" },
        score = detection.score,
        eps = detection.threshold,
        margin = detection.margin,
        task = suspect.task,
        names = suspect.output_names.join(", "),
        gen = reversal.config.generator,
        width = reversal.config.generator_width,
        freg = reversal.config.feature_reg,
        mtr = reversal.config.mtr,
        l1 = reversal.config.lambda1.unwrap_or_default(),
        l2 = reversal.config.lambda2.unwrap_or_default(),
        clean = clean.describe(),
        n = clean.len(),
        target = deg(&s.estimated_target),
        spread = spread(&s.output_std_deg),
        clean_spread = spread(&s.clean_output_std_deg),
        rav = s.rav,
        steps = s.steps,
        sps = s.seconds_per_step,
        elapsed = detection.elapsed_s,
        full = 4.0 * reversal.config.epsilon,
        attention = if reversal.attention.is_some() {
            "\n![momentum attention map](attention.png)\n\nThe momentum attention map M of the MTR: where the model's \
             gradient on the clean images was large (white). Edits there cost 1 + γ·M (`--mtr loss`), or their gradient is divided by it (`--mtr gradient`).\n"
        } else {
            ""
        },
    );
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    Ok(())
}
