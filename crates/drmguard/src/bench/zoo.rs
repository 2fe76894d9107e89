//! `drmguard bench --zoo MANIFEST`: every detector on a labelled collection of models trained
//! anywhere (ONNX or PyTorch cards, drmguard's own files), with the same identification and
//! ROC tables as the grid.
//!
//! The manifest is a CSV file with the columns `model,card,backdoored,attack`: a name, the card
//! (relative to the manifest's folder), whether the model is backdoored (`true`/`false`), and
//! the attack's name (empty for benign models). A model that cannot be scanned (a missing file,
//! a card that does not load) is reported with its error and the others are still scanned.
//! Scans are cached by the card (which names the weights by their SHA-256), the detector's
//! settings and the clean set, so an interrupted run resumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::scoring::{Confusion, roc_auc};
use super::records::redecide;
use super::{cached, mean};
use crate::defenses::drmguard::warp_margin;
use crate::defenses::{CleanSet, DetectorConfigs, DetectorKind};
use crate::error::{Error, Result};
use crate::io::short_hash;
use crate::model_file;
use crate::task::Task;

/// One row of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZooEntry {
    pub model: String,
    /// The card, resolved against the manifest's folder.
    pub card: PathBuf,
    pub backdoored: bool,
    pub attack: Option<String>,
}

/// Reads a manifest, checking every row before anything is scanned.
pub fn read_manifest(path: &Path) -> Result<Vec<ZooEntry>> {
    let bad = |line: usize, message: String| Error::Data(format!("{}, line {line}: {message}", path.display()));
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).map_err(|e| match e.into_kind() {
        csv::ErrorKind::Io(cause) => Error::Read { path: path.to_path_buf(), cause },
        other => Error::Data(format!("{}: {other:?}", path.display())),
    })?;
    let headers = reader.headers().map_err(|e| bad(1, e.to_string()))?.clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let (Some(model), Some(card), Some(backdoored)) = (column("model"), column("card"), column("backdoored")) else {
        return Err(bad(1, format!("the header must name the columns model, card, backdoored (and optionally attack); it is '{}'", headers.iter().collect::<Vec<_>>().join(","))));
    };
    let attack = column("attack");
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut entries: Vec<ZooEntry> = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| bad(line, e.to_string()))?;
        let field = |k: usize| row.get(k).unwrap_or("").to_string();
        let name = field(model);
        if name.is_empty() {
            return Err(bad(line, "the model has no name".into()));
        }
        if entries.iter().any(|e| e.model == name) {
            return Err(bad(line, format!("the model name '{name}' appears twice")));
        }
        let truth = match field(backdoored).to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => return Err(bad(line, format!("backdoored is '{other}' (expected true or false)"))),
        };
        let attack = attack.map(field).filter(|a| !a.is_empty());
        if truth && attack.is_none() {
            return Err(bad(line, format!("the backdoored model '{name}' names no attack")));
        }
        if !truth && attack.is_some() {
            return Err(bad(line, format!("the benign model '{name}' names an attack")));
        }
        entries.push(ZooEntry { model: name, card: folder.join(field(card)), backdoored: truth, attack });
    }
    if entries.is_empty() {
        return Err(Error::Data(format!("{} lists no model", path.display())));
    }
    Ok(entries)
}

/// What the zoo run scans with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZooConfig {
    pub manifest: PathBuf,
    pub detectors: Vec<DetectorKind>,
    pub detector_configs: DetectorConfigs,
    /// The defender's clean images (a user folder); without it, models trained by drmguard on
    /// built-in data get a fresh built-in sample of `clean_size` (default 5% of their training
    /// set, at least 500) and other models cannot be scanned.
    pub clean: Option<PathBuf>,
    pub clean_size: Option<usize>,
    pub seed: u64,
}

/// One detector on one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZooScan {
    pub model: String,
    pub task: Task,
    pub backdoored: bool,
    pub attack: Option<String>,
    pub detector: DetectorKind,
    pub flagged: bool,
    pub score: f64,
    pub suspicion: f64,
    pub threshold: f64,
    pub elapsed_s: f64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub signals: BTreeMap<String, f64>,
}

/// A model that could not be scanned, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZooFailure {
    pub model: String,
    /// The detector that failed on the model; none when the model itself could not be loaded
    /// (every detector is then missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<DetectorKind>,
    pub error: String,
}

/// A detector on one task: an attack's models (or all backdoored ones, attack `all`) against
/// the task's benign models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZooSummary {
    pub task: Task,
    pub attack: String,
    /// A detector's name, or `verdict` for the verdict `drmguard scan` gives ([`ZooVerdict`]).
    pub detector: String,
    #[serde(flatten)]
    pub confusion: Confusion,
    pub accuracy: f64,
    pub roc_auc: Option<f64>,
    pub mean_seconds: f64,
}

/// `results.json` of a zoo run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZooResults {
    pub config: ZooConfig,
    pub drmguard_version: String,
    pub scans: Vec<ZooScan>,
    pub failures: Vec<ZooFailure>,
    /// The verdict `drmguard scan` gives, for every model both of its tests scanned.
    #[serde(default)]
    pub verdicts: Vec<ZooVerdict>,
    pub summary: Vec<ZooSummary>,
    pub elapsed_s: f64,
}

/// The verdict `drmguard scan --defense drmguard` gives a regression model at its defaults, read
/// from the zoo's scans of it by its two tests: the input-agnostic reversal (`agnostic`, the
/// mask test) and the warp collapse (`warp`). Flagged when either test flags; the suspicion is
/// the larger of the two margins past their own thresholds, in log units, as the scan scores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZooVerdict {
    pub model: String,
    pub task: Task,
    pub backdoored: bool,
    pub attack: Option<String>,
    pub flagged: bool,
    pub suspicion: f64,
    pub mask_margin: f64,
    pub warp_margin: f64,
    /// Both scans' time.
    pub elapsed_s: f64,
}

/// The verdict of every model that both tests scanned, in the scans' order.
fn verdicts(scans: &[ZooScan]) -> Vec<ZooVerdict> {
    let of = |model: &str, kind: DetectorKind| scans.iter().find(|s| s.model == model && s.detector == kind);
    scans
        .iter()
        .filter(|s| s.detector == DetectorKind::Agnostic)
        .filter_map(|mask| {
            let warp = of(&mask.model, DetectorKind::Warp)?;
            let (mask_margin, warp_margin) = (mask.score - mask.threshold, warp_margin(warp.score, warp.threshold));
            Some(ZooVerdict {
                model: mask.model.clone(),
                task: mask.task,
                backdoored: mask.backdoored,
                attack: mask.attack.clone(),
                flagged: mask.flagged || warp.flagged,
                suspicion: mask_margin.max(warp_margin),
                mask_margin,
                warp_margin,
                elapsed_s: mask.elapsed_s + warp.elapsed_s,
            })
        })
        .collect()
}

/// What a summary row counts of one scan or verdict.
struct Scored<'a> {
    detector: String,
    task: Task,
    attack: Option<&'a str>,
    backdoored: bool,
    flagged: bool,
    suspicion: f64,
    elapsed_s: f64,
}

impl<'a> From<&'a ZooScan> for Scored<'a> {
    fn from(s: &'a ZooScan) -> Self {
        Scored { detector: s.detector.to_string(), task: s.task, attack: s.attack.as_deref(), backdoored: s.backdoored, flagged: s.flagged, suspicion: s.suspicion, elapsed_s: s.elapsed_s }
    }
}

impl<'a> From<&'a ZooVerdict> for Scored<'a> {
    fn from(v: &'a ZooVerdict) -> Self {
        Scored { detector: "verdict".into(), task: v.task, attack: v.attack.as_deref(), backdoored: v.backdoored, flagged: v.flagged, suspicion: v.suspicion, elapsed_s: v.elapsed_s }
    }
}

impl ZooConfig {
    /// Scans every model of `entries` with every detector; scans are cached under `cache`.
    pub fn run(&self, entries: &[ZooEntry], cache: &Path, device: &Device) -> Result<ZooResults> {
        let started = Instant::now();
        std::fs::create_dir_all(cache).map_err(|cause| Error::Write { path: cache.to_path_buf(), cause })?;
        let (mut scans, mut failures) = (Vec::new(), Vec::new());
        for entry in entries {
            match self.scan_model(entry, cache, device) {
                Ok(found) => {
                    for (kind, scan) in found {
                        match scan {
                            Ok(scan) => scans.push(scan),
                            Err(e) => {
                                tracing::warn!(model = entry.model, %kind, "zoo: cannot scan ({e})");
                                failures.push(ZooFailure { model: entry.model.clone(), detector: Some(kind), error: e.to_string() });
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(model = entry.model, "zoo: cannot scan ({e})");
                    failures.push(ZooFailure { model: entry.model.clone(), detector: None, error: e.to_string() });
                }
            }
        }
        let verdicts = verdicts(&scans);
        let mut scored: Vec<Scored> = scans.iter().map(Scored::from).collect();
        scored.extend(verdicts.iter().map(Scored::from));
        let summary = summarise(&scored);
        Ok(ZooResults {
            config: self.clone(),
            drmguard_version: env!("CARGO_PKG_VERSION").into(),
            scans,
            failures,
            verdicts,
            summary,
            elapsed_s: started.elapsed().as_secs_f64(),
        })
    }

    /// The model's scan by each detector; the outer error is the model's own (it does not load,
    /// no clean set fits it), the inner ones each detector's (e.g. neuron noise on a model
    /// without BatchNorm layers), which leave the other detectors' scans standing.
    #[allow(clippy::type_complexity)]
    fn scan_model(&self, entry: &ZooEntry, cache: &Path, device: &Device) -> Result<Vec<(DetectorKind, Result<ZooScan>)>> {
        let (model, card) = model_file::load(&entry.card, device)?;
        let suspect = card.suspect(model);
        let clean = match &self.clean {
            Some(folder) => CleanSet::from_folder(folder, &suspect)?,
            None => CleanSet::fresh_builtin(&suspect, self.clean_size.unwrap_or_else(|| CleanSet::default_size(&suspect)))?,
        };
        let mut out = Vec::new();
        for &kind in &self.detectors {
            let key = short_hash(&(&card, kind, self.detector_configs.settings_of(kind), self.seed, clean.describe()));
            let scan = cached(&cache.join(format!("zoo-{kind}-{key}.json")), || {
                tracing::info!(model = entry.model, %kind, "zoo: scanning");
                let d = self.detector_configs.build(kind).detect(&suspect, &clean, self.seed, device)?.detection;
                Ok(ZooScan {
                    model: entry.model.clone(),
                    task: suspect.task,
                    backdoored: entry.backdoored,
                    attack: entry.attack.clone(),
                    detector: kind,
                    flagged: d.backdoored,
                    score: d.score,
                    suspicion: d.suspicion,
                    threshold: d.threshold,
                    elapsed_s: d.elapsed_s,
                    signals: d.signals,
                })
            });
            // The manifest, not the cache, says what the model is; the current verdict settings
            // decide (the cache key leaves them out).
            let scan = scan.map(|mut scan| {
                if let Some(v) = redecide(&self.detector_configs, kind, &mut scan.signals) {
                    (scan.score, scan.suspicion, scan.threshold, scan.flagged) = (v.score, v.suspicion, v.threshold, v.backdoored);
                }
                ZooScan { model: entry.model.clone(), backdoored: entry.backdoored, attack: entry.attack.clone(), ..scan }
            });
            out.push((kind, scan));
        }
        Ok(out)
    }
}

/// Per task, each attack's models (and all backdoored ones, attack `all`) against the task's
/// benign models, for every detector (and the verdict) in the order they first appear.
fn summarise(scored: &[Scored]) -> Vec<ZooSummary> {
    let mut tasks: Vec<Task> = scored.iter().map(|s| s.task).collect();
    tasks.sort_by_key(|t| t.to_string());
    tasks.dedup();
    let mut detectors: Vec<&str> = Vec::new();
    for s in scored {
        if !detectors.contains(&s.detector.as_str()) {
            detectors.push(&s.detector);
        }
    }
    let mut out = Vec::new();
    for task in tasks {
        let mut attacks: Vec<&str> = scored.iter().filter(|s| s.task == task).filter_map(|s| s.attack).collect();
        attacks.sort();
        attacks.dedup();
        attacks.push("all");
        for &attack in &attacks {
            for &detector in &detectors {
                let of = |backdoored: bool| -> Vec<&Scored> {
                    scored
                        .iter()
                        .filter(|s| s.task == task && s.detector == detector && s.backdoored == backdoored)
                        .filter(|s| !backdoored || attack == "all" || s.attack == Some(attack))
                        .collect()
                };
                let (positives, negatives) = (of(true), of(false));
                if positives.is_empty() || negatives.is_empty() {
                    continue;
                }
                let confusion = Confusion::count(positives.iter().chain(&negatives).map(|s| (s.backdoored, s.flagged)));
                let suspicion = |v: &[&Scored]| v.iter().map(|s| s.suspicion).collect::<Vec<_>>();
                out.push(ZooSummary {
                    task,
                    attack: attack.to_string(),
                    detector: detector.to_string(),
                    accuracy: confusion.accuracy(),
                    confusion,
                    roc_auc: roc_auc(&suspicion(&positives), &suspicion(&negatives)),
                    mean_seconds: mean(positives.iter().chain(&negatives).map(|s| s.elapsed_s)),
                });
            }
        }
    }
    out
}

/// `results.md` of a zoo run.
pub fn markdown(r: &ZooResults) -> String {
    let mut md = format!(
        "# drmguard zoo scan\n\nManifest `{}`: {} scans of {} models, {} scans failed; drmguard {}; {:.0} s this run (cached scans are free).\n",
        r.config.manifest.display(),
        r.scans.len(),
        r.scans.iter().map(|s| &s.model).collect::<std::collections::BTreeSet<_>>().len(),
        r.failures.len(),
        r.drmguard_version,
        r.elapsed_s
    );
    md.push_str("\n## Identification and ROC-AUC (each attack's models against the task's benign models)\n\n| task | attack | detector | TP / FP / FN / TN | accuracy | ROC-AUC | mean scan time |\n|---|---|---|---|---|---|---|\n");
    for s in &r.summary {
        let k = &s.confusion;
        md.push_str(&format!(
            "| {} | {} | {} | {} / {} / {} / {} | {:.2} | {} | {:.1} s |\n",
            s.task,
            s.attack,
            s.detector,
            k.tp,
            k.fp,
            k.fn_,
            k.tn,
            s.accuracy,
            s.roc_auc.map_or("–".into(), |a| format!("{a:.2}")),
            s.mean_seconds
        ));
    }
    md.push_str("\n## Scans\n\n| model | task | truth | detector | flagged | score | suspicion | time |\n|---|---|---|---|---|---|---|---|\n");
    for s in &r.scans {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.4} | {:.4} | {:.1} s |\n",
            s.model,
            s.task,
            s.attack.as_deref().unwrap_or("benign"),
            s.detector,
            if s.flagged { "yes" } else { "no" },
            s.score,
            s.suspicion,
            s.elapsed_s
        ));
    }
    if !r.verdicts.is_empty() {
        md.push_str("\n## The verdict `drmguard scan` gives (flagged when the mask test or the warp test flags; margins in log units past each test's threshold)\n\n| model | task | truth | flagged | mask margin | warp margin | suspicion |\n|---|---|---|---|---|---|---|\n");
        for v in &r.verdicts {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:+.2} | {:+.2} | {:+.2} |\n",
                v.model,
                v.task,
                v.attack.as_deref().unwrap_or("benign"),
                if v.flagged { "yes" } else { "no" },
                v.mask_margin,
                v.warp_margin,
                v.suspicion
            ));
        }
    }
    if !r.failures.is_empty() {
        md.push_str("\n## Not scanned\n\n| model | detector | error |\n|---|---|---|\n");
        for f in &r.failures {
            let detector = f.detector.map_or("every one".to_string(), |d| d.to_string());
            md.push_str(&format!("| {} | {detector} | {} |\n", f.model, f.error.replace('|', "\\|")));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(model: &str, backdoored: bool, detector: DetectorKind, score: f64, threshold: f64, flagged: bool) -> ZooScan {
        ZooScan {
            model: model.into(),
            task: Task::Gaze,
            backdoored,
            attack: backdoored.then(|| "wanet".into()),
            detector,
            flagged,
            score,
            suspicion: score,
            threshold,
            elapsed_s: 1.0,
            signals: BTreeMap::new(),
        }
    }

    #[test]
    fn the_verdict_flags_what_either_test_flags_and_ranks_by_the_larger_margin() {
        let ln = f64::ln;
        let scans = vec![
            scan("benign", false, DetectorKind::Agnostic, 0.1, ln(1.8), false),
            scan("benign", false, DetectorKind::Warp, 0.9, 0.14, false),
            scan("warped", true, DetectorKind::Agnostic, 0.3, ln(1.8), false),
            scan("warped", true, DetectorKind::Warp, 0.02, 0.14, true),
            scan("mask only", true, DetectorKind::Agnostic, 2.0, ln(1.8), true),
        ];
        let v = verdicts(&scans);
        assert_eq!(v.iter().map(|v| v.model.as_str()).collect::<Vec<_>>(), ["benign", "warped"], "a model needs both tests");
        assert!(!v[0].flagged && v[1].flagged);
        assert!((v[1].warp_margin - ln(0.14 / 0.02)).abs() < 1e-12);
        assert_eq!(v[1].suspicion, v[1].warp_margin.max(v[1].mask_margin));
        assert!(v[0].suspicion < 0.0 && v[1].suspicion > 0.0, "0 is where the verdict turns");

        let scored: Vec<Scored> = v.iter().map(Scored::from).collect();
        let summary = summarise(&scored);
        assert_eq!(summary.iter().map(|s| s.attack.as_str()).collect::<Vec<_>>(), ["wanet", "all"]);
        assert_eq!((summary[0].accuracy, summary[0].roc_auc), (1.0, Some(1.0)));
    }
}
