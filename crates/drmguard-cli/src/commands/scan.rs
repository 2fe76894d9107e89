use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use drmguard::burn::tensor::Device;
use drmguard::defenses::{CleanSet, DetectorConfigs, DetectorKind, Suspect};
use drmguard::device::DeviceKind;
use drmguard::model_file::{self, ModelCard};
use drmguard::report::scan::write_scan_report;
use drmguard::task::Task;

/// What every defense command needs: the suspect model and the defender's clean images.
#[derive(Args, Clone)]
pub struct DefenseInput {
    /// Model weights (MODEL.safetensors with its sidecar MODEL.json), or the TOML card of a model
    /// trained elsewhere (see `drmguard inspect`).
    #[arg(long)]
    pub model: PathBuf,
    /// The defender's clean images (a folder in the user format). Without it, for a model
    /// trained on built-in data, a fresh sample is drawn with a seed disjoint from training;
    /// other models (user data, imported) need it.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Size of the fresh built-in clean set (default: 5% of the training set, at least 500).
    #[arg(long = "clean-size")]
    pub clean_size: Option<usize>,
    /// Seed of the defense's own randomness (initial weights, batch order, sampling).
    #[arg(id = "defense_seed", long = "defense-seed", default_value_t = 0)]
    pub seed: u64,
}

impl DefenseInput {
    /// Loads the model as a defense may see it (its card without the attack) and the clean set.
    /// `defense` names the defense, and `able` lists those that handle the model's task, for the
    /// error when `handles` refuses it.
    pub fn load(&self, device: &Device, defense: &str, handles: impl Fn(Task) -> bool, able: impl Fn(Task) -> Vec<String>) -> Result<(Suspect, CleanSet, ModelCard)> {
        let (model, card) =
            model_file::load(&self.model, device).with_context(|| format!("--model {}", self.model.display()))?;
        if !handles(card.task) {
            bail!("--model {}: --defense {defense} does not handle {} models (these do: {})", self.model.display(), card.task, able(card.task).join(", "));
        }
        let suspect = card.suspect(model);
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
    /// Detector to run. The default, DRMGuard's calibrated verdict (the input-agnostic reversal
    /// against reference models trained from the clean set, `--drmguard-test verdict`), is the
    /// one that separates the test bed's benign and backdoored models (docs/testbed.md);
    /// `--drmguard-test generator` runs the paper's generator test instead.
    #[arg(long, value_enum, default_value_t = DetectorKind::Drmguard)]
    defense: DetectorKind,
    #[command(flatten)]
    configs: DetectorConfigs,
    /// Output folder for report.json, report.md, config.json and the defense's pictures (created
    /// if missing).
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
    let able = |task| DetectorKind::ALL.iter().filter(|k| k.handles(task)).map(ToString::to_string).collect();
    let (suspect, clean, _) = a.input.load(&device, &a.defense.to_string(), |task| a.defense.handles(task), able)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create --out {}", a.out.display()))?;
    let detector = a.configs.build(a.defense);
    let finding = detector.detect(&suspect, &clean, a.input.seed, &device).with_context(|| format!("{} scan", a.defense))?;
    write_scan_report(&a.out, &a.input.model, &suspect, &clean, &finding)?;
    let d = &finding.detection;
    out!(
        "{}: {} ({} score {:.4}, threshold {}, margin {:+.4}), {:.0} s; report in {}",
        a.input.model.display(),
        if d.backdoored { "BACKDOORED" } else { "no backdoor found" },
        d.defense,
        d.score,
        d.threshold,
        d.margin,
        d.elapsed_s,
        a.out.display()
    );
    Ok((a.fail_on_backdoor && d.backdoored).then_some(BACKDOOR_EXIT))
}
