//! The runner: each model of the grid trained (or read from the cache), scanned and repaired, jobs at a time.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::data::Split;
use crate::defenses::drmguard::{DrmGuard, DrmGuardRepair, Reversal};
use crate::defenses::{CleanSet, Detection, DetectorKind, MitigatorKind, Suspect, spread_ratio_under};
use crate::error::{Error, Result};
use crate::io::{read_json, short_hash, write_json};
use crate::metrics::constant_predictor_error;
use crate::model_file::ModelCard;
use crate::models::Model;
use crate::parallel::map_in_pools;
use crate::task::Task;
use super::*;

/// The result cached at `path`, if there is a readable one.
pub(super) fn read_cached<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    if !path.is_file() {
        return None;
    }
    read_json(path).map_err(|e| tracing::warn!(path = %path.display(), "the cached result cannot be read ({e})")).ok()
}

/// A result computed once and then read back from `path`.
pub(super) fn cached<T: Serialize + serde::de::DeserializeOwned>(path: &Path, compute: impl FnOnce() -> Result<T>) -> Result<T> {
    if let Some(value) = read_cached(path) {
        return Ok(value);
    }
    let value = compute()?;
    write_json(path, &value)?;
    Ok(value)
}

/// The benchmark runner.
pub struct Bench {
    pub config: BenchConfig,
    /// Models under `models/`, results under `results/`.
    pub cache: PathBuf,
    /// Train, scan and repair nothing: write the tables from what the cache holds, e.g. while
    /// another process is still filling it. What is missing is listed in the results.
    pub only_cached: bool,
    /// Train nothing, but scan and repair the models the cache holds (beside another process
    /// that trains the grid). The models not trained yet are listed as missing.
    pub trained_only: bool,
    /// Models handled at once (at least 1), each with its share of the CPU threads. Every model,
    /// scan and repair has its own seed and cache entry, so the order in which they finish does
    /// not matter.
    pub jobs: usize,
}

/// A model ready for the defenses.
struct Trained {
    record: ModelRecord,
    model: Model,
    card: ModelCard,
}

/// One model of the grid: its training, then its scans and repairs. Units are independent,
/// so `jobs` of them run at once.
struct Unit<'a> {
    task: Task,
    attack: Option<&'a str>,
    index: usize,
    seed: u64,
}

/// What one unit produced.
#[derive(Default)]
struct UnitOutcome {
    model: Option<ModelRecord>,
    detections: Vec<DetectionRecord>,
    mitigations: Vec<MitigationRecord>,
    missing: Vec<String>,
    diagnostic: Option<TriggerDiagnostic>,
}

impl Bench {
    pub fn run(&self, device: &Device) -> Result<BenchResults> {
        let c = &self.config;
        c.validate()?;
        if self.jobs == 0 {
            return Err(Error::invalid("benchmark jobs", "0"));
        }
        let started = Instant::now();
        let results_dir = self.cache.join("results");
        std::fs::create_dir_all(&results_dir).map_err(|cause| Error::Write { path: results_dir.clone(), cause })?;
        let classes: Vec<Option<&str>> = std::iter::once(None).chain(c.attacks.iter().map(|a| Some(a.as_str()))).collect();
        // Model-major order (every class's model 0, then every class's model 1, …), so that a
        // run stopped early leaves a balanced grid to resume from.
        let mut units = Vec::new();
        for index in c.first_model..c.models_per_class.max(c.benign_per_class) {
            for &task in &c.tasks {
                for attack in &classes {
                    let count = if attack.is_some() { c.models_per_class } else { c.benign_per_class };
                    if index < count {
                        units.push(Unit { task, attack: *attack, index, seed: c.model_seed(*attack, index)? });
                    }
                }
            }
        }
        let work: usize = units.iter().map(|u| self.steps_of(u)).sum();
        let bar = crate::progress::progress_bar("bench", work);
        let outcomes = self.run_units(&units, &bar, device)?;
        bar.finish_and_clear();
        let (mut models, mut detections, mut mitigations, mut missing, mut diagnostics) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for o in outcomes {
            diagnostics.extend(o.diagnostic);
            models.extend(o.model);
            detections.extend(o.detections);
            mitigations.extend(o.mitigations);
            missing.extend(o.missing);
        }
        let detection_summary = summarise_detections(c, &models, &detections);
        let signal_summary = summarise_signals(c, &models, &detections);
        let mitigation_summary = summarise_mitigations(c, &models, &mitigations);
        let verdicts = verdict::combine(c, &models, &detections);
        Ok(BenchResults {
            config: c.clone(),
            drmguard_version: env!("CARGO_PKG_VERSION").into(),
            machine: format!(
                "{} CPU threads, device {:?}, {} job{} at once",
                std::thread::available_parallelism().map_or(0, |n| n.get()),
                device,
                self.jobs,
                if self.jobs == 1 { "" } else { "s" }
            ),
            models,
            detections,
            mitigations,
            detection_summary,
            signal_summary,
            mitigation_summary,
            elapsed_s: started.elapsed().as_secs_f64(),
            missing,
            diagnostics,
            verdicts,
        })
    }

    /// Whether every mitigator repairs the unit's model: one of the first backdoored models of
    /// its attack.
    fn repaired(&self, u: &Unit) -> bool {
        u.attack.is_some() && u.index < self.config.mitigated_per_class
    }

    /// The progress steps of a unit: its training, its scans and its repairs.
    fn steps_of(&self, u: &Unit) -> usize {
        let c = &self.config;
        1 + c.detectors.len() + if self.repaired(u) { c.mitigators.len() } else { 0 }
    }

    /// Every unit, `jobs` at a time, outcomes in the units' order whatever the finishing order.
    /// Each job computes inside its own rayon pool with its share of the cores, so two jobs on
    /// two cores behave like two one-thread processes: the small profile's convolutions are too
    /// small to keep two threads busy, so one job at a time would leave much of the machine idle.
    fn run_units(&self, units: &[Unit], bar: &ProgressBar, device: &Device) -> Result<Vec<UnitOutcome>> {
        map_in_pools(units.len(), self.jobs, |i| self.run_unit(&units[i], bar, device))
    }

    /// One model: trained (or read from the cache), then scanned by every detector and, if it is
    /// one of the first backdoored models of its attack, repaired by every mitigator.
    fn run_unit(&self, u: &Unit, bar: &ProgressBar, device: &Device) -> Result<UnitOutcome> {
        let c = &self.config;
        let mut out = UnitOutcome::default();
        let class = u.attack.unwrap_or("benign");
        bar.set_message(format!("training {} {class} #{}", u.task, u.index));
        let Some(t) = self.train(u.task, u.attack, u.seed, u.index, device)? else {
            out.missing.push(format!("train {}-{class}-{}", u.task, u.index));
            bar.inc(self.steps_of(u) as u64);
            return Ok(out);
        };
        bar.inc(1);
        let suspect = t.card.suspect(t.model.clone());
        let size = c.clean_size.unwrap_or_else(|| CleanSet::default_size(&suspect));
        let clean = match c.profile.shared_clean_seed(u.task) {
            Some(seed) => CleanSet::shared_builtin(u.task, size, suspect.image_size(), seed)?,
            None => CleanSet::fresh_builtin(&suspect, size)?,
        };
        let mut reversal = None;
        for &kind in &c.detectors {
            bar.set_message(format!("{kind} on {}", t.record.id));
            match self.detect(&t, &suspect, &clean, kind, &mut reversal, device)? {
                Some(d) => out.detections.push(d),
                None => out.missing.push(format!("scan {} {kind}", t.record.id)),
            }
            bar.inc(1);
        }
        if self.repaired(u) {
            for &kind in &c.mitigators {
                bar.set_message(format!("{kind} repairing {}", t.record.id));
                match self.mitigate(&t, &suspect, &clean, kind, &mut reversal, device)? {
                    Some(m) => out.mitigations.push(m),
                    None => out.missing.push(format!("repair {} {kind}", t.record.id)),
                }
                bar.inc(1);
            }
        }
        if (c.detectors.contains(&DetectorKind::Drmguard) || c.detectors.contains(&DetectorKind::Warp)) && t.card.backdoor.is_some() {
            bar.set_message(format!("diagnosing the trigger of {}", t.record.id));
            out.diagnostic = self.diagnose(&t, &suspect, &clean, device)?;
        }
        out.model = Some(t.record);
        Ok(out)
    }

    /// Model `index` of its class, trained unless cached (`None`: not cached in an
    /// `only_cached` or `trained_only` run).
    fn train(&self, task: Task, attack: Option<&str>, seed: u64, index: usize, device: &Device) -> Result<Option<Trained>> {
        let c = &self.config;
        let job = c.train_job(task, attack, seed)?;
        let class = attack.unwrap_or("benign");
        let (dir, name) = (self.cache.join("models"), format!("bench-{task}-{class}"));
        let found = if self.only_cached || self.trained_only { job.find_cached(&dir, &name, device) } else { Some(job.run_cached(&dir, &name, device)?) };
        let Some((model, card, path)) = found else {
            return Ok(None);
        };
        // A cached model's evaluation is computed even in an `only_cached` run: it is one pass
        // over the test split.
        let errors = cached(&self.cache.join("results").join(format!("eval-{}.json", job.key())), || {
            let trained = card.trained("the benchmark")?;
            let test = trained.data.load(task, card.model.input_size, Split::Test)?;
            let (clean, backdoor) = card.errors(&model, &test)?;
            let mean_predictor = constant_predictor_error(task, &trained.label_mean, &test.labels);
            Ok(Errors::from(&clean, &mean_predictor, backdoor.as_ref()))
        })?;
        let record = ModelRecord {
            id: format!("{task}-{class}-{index}"),
            task,
            attack: attack.map(str::to_string),
            seed,
            half: Half::of_index(index),
            standing: Standing::of(task, &errors, c.profile.gated()),
            target: card.backdoor.as_ref().map(|b| b.target.clone()),
            path,
            train_s: card.trained("the benchmark")?.train_seconds,
            errors,
        };
        Ok(Some(Trained { record, model, card }))
    }

    /// A scan or repair cached at `path`: computed unless cached, or `None` in an `only_cached`
    /// run that does not find it.
    fn step<T: Serialize + serde::de::DeserializeOwned>(&self, path: &Path, compute: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        if self.only_cached { Ok(read_cached(path)) } else { cached(path, compute).map(Some) }
    }

    /// DRMGuard's reversal of the model in hand, made once for its scan and its repair (the
    /// benchmark gives both the same DRMGuard settings).
    fn drmguard_reversal<'a>(
        &self,
        memo: &'a mut Option<(Detection, Reversal)>,
        suspect: &Suspect,
        clean: &CleanSet,
        device: &Device,
    ) -> Result<&'a (Detection, Reversal)> {
        if memo.is_none() {
            let drmguard = DrmGuard::new(self.config.detector_configs.drmguard.clone());
            *memo = Some(drmguard.detect_with_reversal(suspect, clean, self.config.seed, device)?);
        }
        Ok(memo.as_ref().expect("filled above"))
    }

    /// The search diagnostic of a backdoored model (see [`TriggerDiagnostic`]): DRMGuard's
    /// measures of the true trigger, with the benchmark's DRMGuard settings, when DRMGuard runs;
    /// the warp test's spread ratio under it, when the warp test runs. Each part is cached alone.
    fn diagnose(&self, t: &Trained, suspect: &Suspect, clean: &CleanSet, device: &Device) -> Result<Option<TriggerDiagnostic>> {
        let c = &self.config;
        let Some(spec) = &t.card.backdoor else { return Ok(None) };
        // Built only on a cache miss: some attacks' triggers take work to build.
        let trigger = || spec.trigger(t.card.task, t.card.model.input_size);
        let results = self.cache.join("results");
        let mut signals = std::collections::BTreeMap::new();
        if c.detectors.contains(&DetectorKind::Drmguard) {
            let key = short_hash(&(&t.record.path, c.detector_configs.settings_of(DetectorKind::Drmguard), c.seed, clean.describe()));
            let found = self.step(&results.join(format!("diagnostic-{}-{key}.json", t.record.id)), || {
                let trigger = trigger()?;
                let drmguard = DrmGuard::new(c.detector_configs.drmguard.clone());
                let s = drmguard.assess_edit(suspect, clean, &|x| trigger.attack.apply(x), c.seed, device)?;
                let mut signals: std::collections::BTreeMap<String, f64> = [
                    ("score", s.score),
                    ("error_ratio", s.error_ratio),
                    ("spread_ratio", s.spread_ratio),
                    ("rav", s.rav),
                    ("feature_dispersion_ratio", s.feature_dispersion_ratio),
                    ("feature_shift", s.feature_shift),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                if let Some(contrast) = s.contrast {
                    signals.insert("contrast".into(), contrast);
                }
                Ok(TriggerDiagnostic { model: t.record.id.clone(), signals })
            })?;
            signals.extend(found.into_iter().flat_map(|d| d.signals));
        }
        if c.detectors.contains(&DetectorKind::Warp) {
            let key = short_hash(&(&t.record.path, c.seed, clean.describe()));
            let batch = c.detector_configs.warp.batch_size;
            let ratio = self.step(&results.join(format!("diagnostic-warp-{}-{key}.json", t.record.id)), || {
                let trigger = trigger()?;
                spread_ratio_under(&suspect.model, clean, &|x| trigger.attack.apply(x), batch)
            })?;
            signals.extend(ratio.map(|r| (WARP_DIAGNOSTIC.to_string(), r)));
        }
        Ok((!signals.is_empty()).then(|| TriggerDiagnostic { model: t.record.id.clone(), signals }))
    }

    fn detect(
        &self,
        t: &Trained,
        suspect: &Suspect,
        clean: &CleanSet,
        kind: DetectorKind,
        reversal: &mut Option<(Detection, Reversal)>,
        device: &Device,
    ) -> Result<Option<DetectionRecord>> {
        let c = &self.config;
        let key = short_hash(&(&t.record.path, kind, c.detector_configs.settings_of(kind), c.seed, clean.describe()));
        let record = self.step(&self.cache.join("results").join(format!("scan-{}-{kind}-{key}.json", t.record.id)), || {
            let d = match kind {
                DetectorKind::Drmguard => self.drmguard_reversal(reversal, suspect, clean, device)?.0.clone(),
                _ => c.detector_configs.build(kind).detect(suspect, clean, c.seed, device)?.detection,
            };
            tracing::info!(model = t.record.id, %kind, score = d.score, backdoored = d.backdoored, seconds = d.elapsed_s, "bench: scanned");
            Ok(DetectionRecord {
                model: t.record.id.clone(),
                detector: kind,
                backdoored: d.backdoored,
                score: d.score,
                suspicion: d.suspicion,
                threshold: d.threshold,
                elapsed_s: d.elapsed_s,
                signals: d.signals,
            })
        })?;
        Ok(record.map(|r| r.redecided(&c.detector_configs)))
    }

    fn mitigate(
        &self,
        t: &Trained,
        suspect: &Suspect,
        clean: &CleanSet,
        kind: MitigatorKind,
        reversal: &mut Option<(Detection, Reversal)>,
        device: &Device,
    ) -> Result<Option<MitigationRecord>> {
        let c = &self.config;
        let key = short_hash(&(&t.record.path, kind, c.mitigator_configs.for_task(suspect.task).settings_of(kind), c.seed, clean.describe()));
        self.step(&self.cache.join("results").join(format!("mitigate-{}-{kind}-{key}.json", t.record.id)), || {
            let started = Instant::now();
            let shared = kind == MitigatorKind::Drmguard && c.mitigator_configs.drmguard == c.detector_configs.drmguard;
            let (repair, elapsed_s) = if shared {
                // The time a user would pay: the (shared) reversal plus the unlearning.
                let (detection, rev) = self.drmguard_reversal(reversal, suspect, clean, device)?;
                let unlearning = Instant::now();
                let m = &c.mitigator_configs;
                let repairer = DrmGuardRepair {
                    drmguard: m.drmguard.clone(),
                    verdict: m.agnostic.clone(),
                    unlearn: m.unlearn.clone(),
                    warp: m.warp.clone(),
                    blend: m.blend.clone(),
                    warp_collapse: m.warp_collapse.clone(),
                };
                let repair = repairer.repair(suspect, clean, detection, rev, device)?;
                (repair, detection.elapsed_s + unlearning.elapsed().as_secs_f64())
            } else {
                let repair = c.mitigator_configs.build(kind).mitigate(suspect, clean, c.seed, device)?;
                (repair, started.elapsed().as_secs_f64())
            };
            let trained = t.card.trained("the benchmark")?;
            let test = trained.data.load(t.card.task, t.card.model.input_size, Split::Test)?;
            let (clean_error, backdoor) = t.card.errors(&repair.model, &test)?;
            let mean_predictor = constant_predictor_error(t.card.task, &trained.label_mean, &test.labels);
            let after = Errors::from(&clean_error, &mean_predictor, backdoor.as_ref());
            tracing::info!(model = t.record.id, %kind, ae = ?after.ae_deg, dae = ?after.dae_deg, seconds = elapsed_s, "bench: mitigated");
            Ok(MitigationRecord { model: t.record.id.clone(), mitigator: kind, before: t.record.errors.clone(), after, elapsed_s })
        })
    }
}
