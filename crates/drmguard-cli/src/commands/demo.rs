//! `drmguard demo`: the whole story on built-in gaze data. Train (or reuse from the cache) one
//! benign and one backdoored model, scan both with the verdict `drmguard scan` gives by default
//! (the input-agnostic reversal against reference models trained from the clean set, and the
//! warp collapse beside it), repair the backdoored one by unlearning what its scan reversed, and
//! print what each step measured.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use drmguard::attacks::{AttackKind, BackdoorSpec, DEFAULT_POISON_RATE};
use drmguard::data::Split;
use drmguard::defenses::{AgnosticConfig, CleanSet, Detector, DrmGuard, DrmGuardConfig, UnlearnConfig, WarpCollapseConfig, repair_finding};
use drmguard::device::DeviceKind;
use drmguard::io::cache_root;
use drmguard::metrics::{BackdoorErrors, TaskError};
use drmguard::model_file;
use drmguard::pipeline::TrainJob;
use drmguard::task::Task;
use drmguard::train::{Profile, TrainConfig};

use drmguard::report::scan::write_scan_report;

#[derive(Args)]
pub struct DemoArgs {
    /// smoke (a few minutes, tiny models that learn little: a check of the pipeline) or small
    /// (64×64 models that learn their task: a few minutes per model to train, cached
    /// afterwards, plus a few minutes per scan).
    #[arg(long, default_value = "small")]
    profile: Profile,
    /// The attack of the backdoored model, with its defaults: badnets, blended, wanet,
    /// clean-label, issba or adaptive.
    #[arg(long, default_value = "badnets")]
    attack: String,
    /// Seed of both models' data and initialisation, of the trigger, of the target and of the defense.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where trained models are cached (default: $DRMGUARD_CACHE, else ~/.cache/drmguard, under models/).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Folder for the scan reports and the repaired model (created if missing).
    #[arg(long, default_value = "drmguard-demo")]
    out: PathBuf,
    #[command(flatten)]
    agnostic: AgnosticConfig,
    #[command(flatten)]
    warp: WarpCollapseConfig,
    #[command(flatten)]
    unlearn: UnlearnConfig,
}

/// One row of the demo's table.
struct Row {
    name: String,
    verdict: String,
    score: Option<f64>,
    clean_deg: f64,
    ae_deg: Option<f64>,
    dae_deg: Option<f64>,
    seconds: f64,
}

impl Row {
    /// A row with only the error columns filled in.
    fn errors(clean: &TaskError, backdoor: Option<&BackdoorErrors>) -> Row {
        Row {
            name: String::new(),
            verdict: String::new(),
            score: None,
            clean_deg: clean.mean_deg,
            ae_deg: backdoor.map(|e| e.attack_error.mean_deg),
            dae_deg: backdoor.map(|e| e.poisoned_true_error.mean_deg),
            seconds: 0.0,
        }
    }
}

pub fn run(a: DemoArgs, device: DeviceKind) -> Result<()> {
    let device = device.device()?;
    let task = Task::Gaze;
    let attack = AttackKind::by_name(&a.attack).context("--attack")?;
    let cache = a.cache.clone().unwrap_or_else(|| cache_root().join("models"));
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create --out {}", a.out.display()))?;
    a.agnostic.validate().context("the scan's settings")?;
    a.warp.validate().context("the warp test's settings")?;
    a.unlearn.validate().context("the repair's settings")?;
    let config = TrainConfig::new(task, a.profile, a.seed);
    let backdoor = BackdoorSpec { attack, target: BackdoorSpec::default_target(task, a.seed), poison_rate: DEFAULT_POISON_RATE, seed: a.seed };
    let jobs = [
        ("benign", TrainJob::builtin(config.clone(), None)?),
        (a.attack.as_str(), TrainJob::builtin(config, Some(backdoor))?),
    ];

    let (mut rows, mut rule) = (Vec::new(), None);
    for (name, job) in &jobs {
        // Named like `train`'s Clean-Label surrogate (TASK-benign-KEY), so the benign model is shared.
        let (model, card, path) = job
            .run_cached(&cache, &format!("{task}-{name}"), &device)
            .with_context(|| format!("training the {name} model (cache {})", cache.display()))?;
        let trained = card.trained("the demo")?;
        out!("{name}: model {} (trained in {:.0} s)", path.display(), trained.train_seconds);
        let test = trained.data.load(task, card.model.input_size, Split::Test).context("test data")?;
        let (clean_error, backdoor_errors) = card.errors(&model, &test)?;

        // The defense sees the model without its card's attack record, and fresh clean images
        // (the same for both models, which share a seed: the references are trained once).
        let suspect = card.suspect(model.clone());
        let clean = CleanSet::fresh_builtin(&suspect, CleanSet::default_size(&suspect))?;
        let detector = DrmGuard::with_verdict(DrmGuardConfig::default(), a.agnostic.clone()).with_warp(Some(a.warp.clone()));
        let finding = detector.detect(&suspect, &clean, a.seed, &device).context("the scan")?;
        let dir = a.out.join(format!("scan-{name}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_scan_report(&dir, &path, &suspect, &clean, &finding)?;
        let detection = &finding.detection;
        rows.push(Row {
            name: name.to_string(),
            verdict: if detection.backdoored { "BACKDOORED".into() } else { "clean".into() },
            score: Some(detection.score),
            seconds: detection.elapsed_s,
            ..Row::errors(&clean_error, backdoor_errors.as_ref())
        });
        out!("{name}: score {:+.2} (threshold {:+.2}), {:.0} s; report in {}", detection.score, detection.threshold, detection.elapsed_s, dir.display());

        if card.backdoor.is_some() {
            let started_mitigation = Instant::now();
            let mut repair = repair_finding(&finding, &suspect, &clean, &a.unlearn, &device).context("the repair")?;
            let (clean_error, backdoor_errors) = card.errors(&repair.model, &test)?;
            if let Some(fields) = repair.record.as_object_mut() {
                fields.insert("source_model".into(), serde_json::json!(path));
            }
            let mut repaired_card = card.clone();
            repaired_card.mitigation = Some(repair.record);
            let out = a.out.join(format!("{name}-mitigated.safetensors"));
            model_file::save(&out, &repair.model, &repaired_card)?;
            rows.push(Row {
                name: format!("{name}, mitigated"),
                verdict: "-".into(),
                score: None,
                seconds: started_mitigation.elapsed().as_secs_f64(),
                ..Row::errors(&clean_error, backdoor_errors.as_ref())
            });
            out!("{name}: mitigated in {:.0} s; wrote {}", started_mitigation.elapsed().as_secs_f64(), out.display());
        }
        rule.get_or_insert(finding.rule);
    }

    let opt = |v: Option<f64>, digits: usize, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.digits$}{unit}"));
    out!("");
    out!("{:<22} {:>11} {:>8} {:>12} {:>9} {:>9} {:>7}", "model", "verdict", "score", "clean error", "AE", "DAE", "time");
    for r in &rows {
        out!(
            "{:<22} {:>11} {:>8} {:>12} {:>9} {:>9} {:>6.0}s",
            r.name,
            r.verdict,
            opt(r.score, 2, ""),
            format!("{:.2}°", r.clean_deg),
            opt(r.ae_deg, 2, "°"),
            opt(r.dae_deg, 2, "°"),
            r.seconds
        );
    }
    out!("");
    if let Some(rule) = rule {
        out!("{rule}.");
    }
    out!("AE: error of triggered test images to the attacker's target (low = the backdoor works);");
    out!("DAE: their error to the true labels (low = the backdoor is gone).");
    Ok(())
}
