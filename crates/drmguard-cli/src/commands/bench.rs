//! `drmguard bench`: the paper's tables, side by side, with time.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use drmguard::attacks::AttackKind;
use drmguard::bench::report::write_results;
use drmguard::bench::zoo::{self, ZooConfig, read_manifest};
use drmguard::bench::{Bench, BenchConfig, BenchProfile};
use drmguard::defenses::{DetectorConfigs, DetectorKind, MitigatorKind};
use drmguard::device::DeviceKind;
use drmguard::io::cache_root;
use drmguard::io::{write_atomic, write_json};
use drmguard::task::Task;

#[derive(Args)]
pub struct BenchArgs {
    /// smoke (minutes, tiny models, for CI), tiny (32×32, quick but its models barely learn),
    /// small (the 64×64 test bed), paper (the paper's setting, for GPUs).
    #[arg(id = "bench_profile", long = "profile", value_enum, default_value_t = BenchProfile::Small)]
    profile: BenchProfile,
    /// Tasks, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [Task::Gaze, Task::HeadPose])]
    tasks: Vec<Task>,
    /// Attacks, comma-separated, or `all`.
    #[arg(long, default_value = "all")]
    attacks: String,
    /// Detectors, comma-separated (drmguard, nc, featurere, abs), `all`, or `none` (train only).
    #[arg(long, default_value = "all")]
    detectors: String,
    /// Mitigators, comma-separated (drmguard, ft, fp, anp, nc), `all`, or `none`.
    #[arg(long, default_value = "all")]
    mitigators: String,
    /// Models per class (benign, and each attack): default 2 (smoke), 5 (tiny), 4 per attack
    /// and 8 benign (small), 10 (paper).
    #[arg(long = "models-per-class")]
    models_per_class: Option<usize>,
    /// Benign models per task, when it differs from --models-per-class.
    #[arg(long = "benign-per-class")]
    benign_per_class: Option<usize>,
    /// Backdoored models of each attack that every mitigator repairs (the first ones): default
    /// all of them, 1 for the small profile.
    #[arg(long = "mitigated-per-class")]
    mitigated_per_class: Option<usize>,
    /// Leave out the models before this index in every class (e.g. `--from-model 5` with
    /// `--models-per-class 10` trains, scans and repairs models 5–9 only, for a second machine
    /// or for the repairs a first run left); the tables hold only the models run.
    #[arg(long = "from-model", default_value_t = 0)]
    from_model: usize,
    /// Base seed of the models and defenses.
    #[arg(id = "bench_seed", long = "seed", default_value_t = 0)]
    seed: u64,
    /// Cache of trained models and finished steps, so that a rerun resumes (default:
    /// $DRMGUARD_CACHE, else ~/.cache/drmguard, under bench/PROFILE).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Train, scan and repair nothing: write the tables from what the cache already holds (for
    /// a look at a run that another process is still filling); what is missing is listed.
    #[arg(id = "bench_only_cached", long = "only-cached")]
    only_cached: bool,
    /// Train nothing: scan and repair the models the cache already holds (beside a run that
    /// trains, e.g. `--detectors none`); the models not trained yet are listed as missing.
    #[arg(id = "bench_trained_only", long = "trained-only", conflicts_with = "bench_only_cached")]
    trained_only: bool,
    /// Models handled at once, each with its share of the CPU threads (default: on the CPU, one
    /// per CPU thread, at most 8, for the smoke and small profiles; else 1, since a GPU or the
    /// paper's 224×224 models want the whole machine for one job).
    #[arg(id = "bench_jobs", long = "jobs")]
    jobs: Option<usize>,
    /// Scan the models of a manifest instead of training the grid: a CSV file with the columns
    /// model,card,backdoored,attack (cards relative to the manifest), scanned with every
    /// detector of --detectors at the profile's settings. A model that cannot be scanned is
    /// listed with its error; the others are still scanned.
    #[arg(long, value_name = "MANIFEST")]
    zoo: Option<PathBuf>,
    /// With --zoo: the defender's clean images (a folder in the user format). Without it, only
    /// models trained by drmguard on built-in data can be scanned (each gets a fresh sample).
    #[arg(id = "bench_data", long = "data", requires = "zoo")]
    data: Option<PathBuf>,
    /// One detector setting changed from the profile's, as DETECTOR.FIELD=VALUE with the field
    /// named as in config.json (e.g. `agnostic.restart_targets=exclude`); repeatable. Scans are
    /// cached by their settings, so a changed setting rescans.
    #[arg(long = "set", value_name = "DETECTOR.FIELD=VALUE")]
    set: Vec<String>,
    /// Output folder for results.json, results.md, config.json and the plots (created if missing).
    #[arg(long, default_value = "drmguard-bench")]
    out: PathBuf,
}

/// `all`, `none`, or a comma-separated list parsed by `parse`.
fn list<T>(text: &str, all: Vec<T>, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    match text {
        "all" => return Ok(all),
        "none" => return Ok(Vec::new()),
        _ => {}
    }
    let items = text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(parse).collect::<Result<Vec<_>>>()?;
    if items.is_empty() {
        bail!("an empty list");
    }
    Ok(items)
}

fn value_enum<T: clap::ValueEnum>(name: &str) -> Result<T> {
    T::from_str(name, true).map_err(|_| {
        let expected: Vec<String> = T::value_variants().iter().filter_map(|v| v.to_possible_value()).map(|v| v.get_name().to_string()).collect();
        anyhow::anyhow!("unknown name '{name}' (expected one of: {})", expected.join(", "))
    })
}

/// `--set DETECTOR.FIELD=VALUE`, in order.
fn apply_settings(configs: &mut DetectorConfigs, assignments: &[String]) -> Result<()> {
    for assignment in assignments {
        configs.set(assignment).with_context(|| format!("--set {assignment}"))?;
    }
    Ok(())
}

fn default_jobs(profile: BenchProfile, device: DeviceKind) -> usize {
    if device != DeviceKind::Cpu || profile == BenchProfile::Paper {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

pub fn run(a: BenchArgs, device_kind: DeviceKind) -> Result<()> {
    let device = device_kind.device()?;
    if let Some(manifest) = &a.zoo {
        return run_zoo(&a, manifest, &device);
    }
    let mut config = BenchConfig::new(a.profile);
    config.tasks = a.tasks.clone();
    config.attacks = list(&a.attacks, config.attacks.clone(), |n| Ok(AttackKind::by_name(n)?.name().to_string())).context("--attacks")?;
    // `all`: those that handle every task of the run (classifiers have fewer).
    let every_task = |handles: &dyn Fn(Task) -> bool| a.tasks.iter().all(|&t| handles(t));
    let detectors = config.detectors.iter().copied().filter(|k| every_task(&|t| k.handles(t))).collect();
    let mitigators = config.mitigators.iter().copied().filter(|k| every_task(&|t| k.handles(t))).collect();
    config.detectors = list(&a.detectors, detectors, value_enum::<DetectorKind>).context("--detectors")?;
    config.mitigators = list(&a.mitigators, mitigators, value_enum::<MitigatorKind>).context("--mitigators")?;
    if let Some(n) = a.models_per_class {
        config.models_per_class = n;
        config.benign_per_class = n;
    }
    config.benign_per_class = a.benign_per_class.unwrap_or(config.benign_per_class);
    config.mitigated_per_class = a.mitigated_per_class.unwrap_or(config.mitigated_per_class).min(config.models_per_class);
    config.first_model = a.from_model;
    config.seed = a.seed;
    apply_settings(&mut config.detector_configs, &a.set)?;
    config.validate()?;
    let jobs = a.jobs.unwrap_or_else(|| default_jobs(a.profile, device_kind));
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create --out {}", a.out.display()))?;
    let cache = a.cache.clone().unwrap_or_else(|| cache_root().join("bench").join(a.profile.to_string()));
    let results = Bench { config, cache: cache.clone(), only_cached: a.only_cached, trained_only: a.trained_only, jobs }.run(&device).with_context(|| format!("benchmark (cache {})", cache.display()))?;
    let figures = write_results(&a.out, &results)?;
    out!(
        "benchmark done in {:.0} s: {} models, {} scans, {} mitigations; wrote results.json, results.md and {} plots to {}",
        results.elapsed_s,
        results.models.len(),
        results.detections.len(),
        results.mitigations.len(),
        figures.len(),
        a.out.display()
    );
    if !results.missing.is_empty() {
        out!("partial: {} steps were not in the cache and are left out (`missing` in results.json)", results.missing.len());
    }
    Ok(())
}

/// `bench --zoo`: every detector on every model of a manifest.
fn run_zoo(a: &BenchArgs, manifest: &std::path::Path, device: &drmguard::burn::tensor::Device) -> Result<()> {
    let entries = read_manifest(manifest).with_context(|| format!("--zoo {}", manifest.display()))?;
    let mut defaults = BenchConfig::new(a.profile);
    apply_settings(&mut defaults.detector_configs, &a.set)?;
    let config = ZooConfig {
        manifest: manifest.to_path_buf(),
        detectors: list(&a.detectors, defaults.detectors.clone(), value_enum::<DetectorKind>).context("--detectors")?,
        detector_configs: defaults.detector_configs,
        clean: a.data.clone(),
        clean_size: defaults.clean_size,
        seed: a.seed,
    };
    if config.detectors.is_empty() {
        bail!("--zoo needs at least one detector (--detectors)");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create --out {}", a.out.display()))?;
    let cache = a.cache.clone().unwrap_or_else(|| cache_root().join("bench").join("zoo"));
    let results = config.run(&entries, &cache, device).with_context(|| format!("zoo scan (cache {})", cache.display()))?;
    write_json(&a.out.join("results.json"), &results)?;
    write_json(&a.out.join("config.json"), &results.config)?;
    write_atomic(&a.out.join("results.md"), zoo::markdown(&results).as_bytes())?;
    out!(
        "zoo scan done in {:.0} s: {} scans of {} models; wrote results.json and results.md to {}",
        results.elapsed_s,
        results.scans.len(),
        results.scans.iter().map(|s| &s.model).collect::<std::collections::BTreeSet<_>>().len(),
        a.out.display()
    );
    for f in &results.failures {
        match f.detector {
            Some(detector) => out!("not scanned by {detector}: {}: {}", f.model, f.error),
            None => out!("not scanned: {}: {}", f.model, f.error),
        }
    }
    Ok(())
}
