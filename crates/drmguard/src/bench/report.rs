//! The benchmark's files: `results.json`, `results.md` (the paper's tables), `config.json`, and
//! per task a ROC plot and score histograms.

use std::path::Path;

use super::scoring::roc_curve;
use super::{BenchResults, DetectionSummary, Half, LEARNED_ACCURACY, LEARNED_RATIO, TOOK_AE, TOOK_ASR, TriggerDiagnostic, WARP_DIAGNOSTIC, mean};
use crate::defenses::DetectorKind;
use crate::error::Result;
use crate::io::{write_atomic, write_json};
use crate::task::Task;

/// Writes every file of `results` into `out`; returns the figures written (file names).
pub fn write_results(out: &Path, results: &BenchResults) -> Result<Vec<String>> {
    write_json(&out.join("results.json"), results)?;
    write_json(&out.join("config.json"), &results.config)?;
    let mut figures = Vec::new();
    for &task in &results.config.tasks {
        let (backdoored, benign) = (suspicions(results, task, true), suspicions(results, task, false));
        let curves: Vec<(String, Vec<(f64, f64)>)> = results
            .config
            .detectors
            .iter()
            .map(|&d| (d.to_string(), roc_curve(&backdoored(d), &benign(d))))
            .collect();
        let file = format!("roc_{task}.png");
        if super::plots::roc_plot(&out.join(&file), &format!("ROC, {task}, all attacks"), &curves)? {
            figures.push(file);
        }
        for &d in &results.config.detectors {
            let file = format!("scores_{task}_{d}.png");
            if super::plots::histogram(&out.join(&file), &format!("{d} suspicion, {task}"), &benign(d), &backdoored(d))? {
                figures.push(file);
            }
        }
    }
    write_atomic(&out.join("results.md"), markdown(results, &figures).as_bytes())?;
    Ok(figures)
}

/// Suspicion scores of one detector on a task's backdoored (or benign) models.
fn suspicions(results: &BenchResults, task: Task, backdoored: bool) -> impl Fn(DetectorKind) -> Vec<f64> + '_ {
    move |detector| {
        results
            .detections
            .iter()
            .filter(|d| d.detector == detector)
            .filter(|d| {
                results.models.iter().any(|m| m.id == d.model && m.task == task && m.attack.is_some() == backdoored && m.standing.counts())
            })
            .map(|d| d.suspicion)
            .collect()
    }
}

/// The header of a table with one row per attack and one column per detector.
fn detector_header(detectors: &[DetectorKind]) -> String {
    let names: String = detectors.iter().map(|d| format!(" {d} |")).collect();
    format!("| attack |{names}\n|---|{}\n", "---|".repeat(detectors.len()))
}

fn markdown(r: &BenchResults, figures: &[String]) -> String {
    let c = &r.config;
    let mut md = format!(
        "# drmguard benchmark ({} profile)\n\n{} benign models per task and {} per attack ({} repaired per attack){}; tasks {}; attacks {}; drmguard {}; {}; {:.0} s this run \
         (cached steps are free). Every number is recomputable from `results.json`.\n",
        c.profile,
        c.benign_per_class,
        c.models_per_class,
        c.mitigated_per_class,
        if c.first_model > 0 { format!(", from model {} of each class on", c.first_model) } else { String::new() },
        c.tasks.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
        c.attacks.join(", "),
        r.drmguard_version,
        r.machine,
        r.elapsed_s
    );
    if !r.missing.is_empty() {
        md.push_str(&format!(
            "\n**Partial: written from the cache alone, which lacks {} of this run's steps** ({}{}); the tables leave them out.\n",
            r.missing.len(),
            r.missing.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            if r.missing.len() > 5 { ", …: `missing` in results.json" } else { "" }
        ));
    }
    md.push_str(&format!(
        "\nCompute, summed over the steps as each was timed when it ran: training {:.2} h, scans {:.2} h, repairs {:.2} h.\n",
        hours(r.models.iter().map(|m| m.train_s)),
        hours(r.detections.iter().map(|d| d.elapsed_s)),
        hours(r.mitigations.iter().map(|m| m.elapsed_s)),
    ));
    md.push_str(&split_note(r));
    let opt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
    for &task in &c.tasks {
        let rows: Vec<&DetectionSummary> = r.detection_summary.iter().filter(|s| s.task == task).collect();
        md.push_str(&format!("\n## {task}\n"));
        md.push_str(&attack_table(r, task));
        let cell = |attack: &String, d: DetectorKind, half: Half| rows.iter().find(|s| &s.attack == attack && s.detector == d && s.half == half);
        md.push_str("\n### Identification (TP / FP / FN / TN, accuracy; test half, then calibration half)\n\n");
        md.push_str(&detector_header(&c.detectors));
        let counts = |s: Option<&&DetectionSummary>| match s {
            Some(s) => {
                let k = &s.confusion;
                format!("{} / {} / {} / {}, {:.2}", k.tp, k.fp, k.fn_, k.tn, s.accuracy)
            }
            None => "–".to_string(),
        };
        for attack in &c.attacks {
            md.push_str(&format!("| {attack} |"));
            for &d in &c.detectors {
                md.push_str(&format!(" {} (cal. {}) |", counts(cell(attack, d, Half::Test)), counts(cell(attack, d, Half::Calibration))));
            }
            md.push('\n');
        }
        md.push_str("\n### ROC-AUC (backdoored models of the attack against the benign models; test half (models), then calibration half)\n\n");
        md.push_str(&detector_header(&c.detectors));
        let auc = |s: Option<&&DetectionSummary>| match s {
            Some(s) => format!("{} ({})", opt(s.roc_auc), s.confusion.tp + s.confusion.fp + s.confusion.fn_ + s.confusion.tn),
            None => "–".to_string(),
        };
        for attack in &c.attacks {
            md.push_str(&format!("| {attack} |"));
            for &d in &c.detectors {
                md.push_str(&format!(" {} (cal. {}) |", auc(cell(attack, d, Half::Test)), auc(cell(attack, d, Half::Calibration))));
            }
            md.push('\n');
        }
        md.push_str("| mean scan time |");
        for &d in &c.detectors {
            let times: Vec<f64> = rows.iter().filter(|s| s.detector == d).map(|s| s.mean_seconds).filter(|t| t.is_finite()).collect();
            match times.len() {
                0 => md.push_str(" – |"),
                n => md.push_str(&format!(" {:.1} s |", times.iter().sum::<f64>() / n as f64)),
            }
        }
        md.push('\n');
        md.push_str(&signal_table(r, task));
        md.push_str(&verdict_table(r, task));
        md.push_str(&diagnostic_table(r, task));
        let unit = task.unit_name();
        let read = if task.is_classification() { "; a classifier's clean error is 100 − its accuracy, its AE 100 − its ASR" } else { "" };
        md.push_str(&format!(
            "\n### Mitigation (mean over the attack's repaired models: clean error / AE / DAE in {unit}, before → after{read})\n\n\
             | attack | mitigator | models | clean | AE | DAE | time |\n|---|---|---|---|---|---|---|\n",
        ));
        let repaired: Vec<_> = r.mitigation_summary.iter().filter(|s| s.task == task).collect();
        if repaired.is_empty() {
            md.push_str("| (no model was repaired in this run) | | | | | | |\n");
        }
        for s in repaired {
            md.push_str(&format!(
                "| {} | {} | {} | {:.2} → {:.2} | {:.2} → {:.2} | {:.2} → {:.2} | {:.1} s |\n",
                s.attack,
                s.mitigator,
                s.models,
                s.clean_before_deg,
                s.clean_after_deg,
                s.ae_before_deg,
                s.ae_after_deg,
                s.dae_before_deg,
                s.dae_after_deg,
                s.mean_seconds
            ));
        }
        md.push_str(&format!(
            "\n### Models (clean error against the mean predictor's, AE / DAE, training time, half, standing{read})\n\n\
             | model | clean | mean predictor | AE | DAE | train | half | standing |\n|---|---|---|---|---|---|---|---|\n",
        ));
        for m in r.models.iter().filter(|m| m.task == task) {
            let e = &m.errors;
            md.push_str(&format!(
                "| {} | {:.2} | {:.2} | {} | {} | {:.0} s | {} | {} |\n",
                m.id,
                e.clean_deg,
                e.mean_predictor_deg,
                opt(e.ae_deg),
                opt(e.dae_deg),
                m.train_s,
                m.half,
                m.standing
            ));
        }
        for f in figures.iter().filter(|f| f.contains(&format!("_{task}"))) {
            md.push_str(&format!("\n![{f}]({f})\n"));
        }
    }
    md
}

/// Each detector signal alone on a task: the direction the calibration half gives, and the ROC-AUC
/// of each half in that direction.
fn signal_table(r: &BenchResults, task: Task) -> String {
    let rows: Vec<_> = r.signal_summary.iter().filter(|s| s.task == task).collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n### Each signal alone (ROC-AUC in the direction the calibration half gives; test half (models), calibration half (models))\n\n\
         | attack | detector | signal | suspicious when | test | calibration |\n|---|---|---|---|---|---|\n",
    );
    let auc = |a: Option<f64>, n: usize| a.map_or("–".to_string(), |a| format!("{a:.2} ({n})"));
    for s in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            s.attack,
            s.detector,
            s.signal,
            if s.high_is_suspicious { "high" } else { "low" },
            auc(s.test_auc, s.test_models),
            auc(s.calibration_auc, s.calibration_models)
        ));
    }
    md
}

/// The combined verdict on a task: the benign statistics it standardises with, and per attack
/// its counts and ROC-AUC on each half, with the threshold fitted with and without the attack.
fn verdict_table(r: &BenchResults, task: Task) -> String {
    let Some(v) = r.verdicts.iter().find(|v| v.task == task) else {
        return String::new();
    };
    let mut md = format!(
        "\n### Combined verdict (each signal's log standardised against the {} benign calibration models; score = the most suspicious; flagged above a threshold fitted on the calibration half)\n\n",
        v.calibrations.first().map_or(0, |k| k.benign_models)
    );
    for k in &v.calibrations {
        md.push_str(&format!("- {}.{}: benign log mean {:.3}, standard deviation {:.3}\n", k.detector, k.signal, k.mean_log, k.std_log));
    }
    md.push_str(
        "\n| attack | threshold | test: TP/FP/FN/TN | accuracy | ROC-AUC | calibration: TP/FP/FN/TN | ROC-AUC | without the attack: threshold | test TP/FP/FN/TN |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let counts = |c: &super::scoring::Confusion| format!("{}/{}/{}/{}", c.tp, c.fp, c.fn_, c.tn);
    let auc = |a: Option<f64>| a.map_or("–".to_string(), |a| format!("{a:.2}"));
    for s in &v.summaries {
        md.push_str(&format!(
            "| {} | {:.2} | {} | {:.2} | {} | {} | {} | {:.2} | {} |\n",
            s.attack,
            s.threshold,
            counts(&s.test),
            s.test.accuracy(),
            auc(s.test_auc),
            counts(&s.calibration),
            auc(s.calibration_auc),
            s.held_out_threshold,
            counts(&s.held_out_test)
        ));
    }
    md.push_str("\n| model | half | score | standardised signals |\n|---|---|---|---|\n");
    for m in &v.models {
        let z: Vec<String> = m.z.iter().map(|(k, z)| format!("{k} {z:+.2}")).collect();
        md.push_str(&format!("| {} | {:?} | {:+.2} | {} |\n", m.model, m.half, m.score, z.join(", ")));
    }
    md
}

/// The search diagnostics of a task: for each backdoored model, the warp test's and DRMGuard's
/// measures of the true trigger beside those of their searches.
fn diagnostic_table(r: &BenchResults, task: Task) -> String {
    let rows: Vec<_> = r.diagnostics.iter().filter(|d| r.models.iter().any(|m| m.id == d.model && m.task == task)).collect();
    let mut md = warp_diagnostic_table(r, &rows);
    let rows: Vec<_> = rows.into_iter().filter(|d| d.signals.contains_key("score")).collect();
    if rows.is_empty() {
        return md;
    }
    md.push_str(
        "\n### Search diagnostic (DRMGuard's measures of the true trigger, and of the reversal; a reversal that ends with a larger collapse ratio than the trigger's missed it)\n\n\
         | model | trigger: I(f) | error ratio | contrast | reversal: I(f) | error ratio | contrast |\n|---|---|---|---|---|---|---|\n",
    );
    let get = |signals: &std::collections::BTreeMap<String, f64>, k: &str| signals.get(k).map_or("–".to_string(), |v| format!("{v:.3}"));
    for d in rows {
        let reversal = r.detections.iter().find(|x| x.model == d.model && x.detector == DetectorKind::Drmguard).map(|x| &x.signals);
        let empty = std::collections::BTreeMap::new();
        let rev = reversal.unwrap_or(&empty);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            d.model,
            get(&d.signals, "score"),
            get(&d.signals, "error_ratio"),
            get(&d.signals, "contrast"),
            get(rev, "score"),
            get(rev, "error_ratio"),
            get(rev, "contrast")
        ));
    }
    md
}

/// The warp test's side of the search diagnostic: the spread ratio under each backdoored
/// model's true trigger beside the one under the warp the search found.
fn warp_diagnostic_table(r: &BenchResults, rows: &[&TriggerDiagnostic]) -> String {
    let rows: Vec<_> = rows.iter().filter_map(|d| d.signals.get(WARP_DIAGNOSTIC).map(|v| (d, *v))).collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n### Warp search diagnostic (the outputs' spread ratio under the true trigger and under the warp the search found; a search that ends above the trigger of a warp attack missed it)\n\n\
         | model | true trigger | warp search |\n|---|---|---|\n",
    );
    for (d, truth) in rows {
        let found = r.detections.iter().find(|x| x.model == d.model && x.detector == DetectorKind::Warp).and_then(|x| x.signals.get("spread_ratio"));
        md.push_str(&format!("| {} | {truth:.3} | {} |\n", d.model, found.map_or("–".to_string(), |v| format!("{v:.3}"))));
    }
    md
}

/// Seconds summed into hours; an empty sum is 0, not the −0 that f64's `sum` starts from.
fn hours(seconds: impl Iterator<Item = f64>) -> f64 {
    seconds.fold(0.0, |a, b| a + b) / 3600.0
}

/// Which seeds calibrate and which test, and which models are left out of the tables and why.
fn split_note(r: &BenchResults) -> String {
    let ids = |half: Half| -> String {
        let mut seeds: Vec<String> = r.models.iter().filter(|m| m.half == half).map(|m| m.id.clone()).collect();
        seeds.sort();
        if seeds.is_empty() { "none yet".into() } else { seeds.join(", ") }
    };
    let left_out: Vec<String> = r.models.iter().filter(|m| !m.standing.counts()).map(|m| format!("{} ({})", m.id, m.standing)).collect();
    let gate = if r.config.profile.gated() {
        format!(
            "A model counts only if it learned its task (clean error ≤ {LEARNED_RATIO} × the mean predictor's) and, if backdoored, \
             its backdoor took (AE ≤ {TOOK_AE}; a classifier: accuracy ≥ {LEARNED_ACCURACY}% and ASR ≥ {TOOK_ASR}%); the others are listed here and in the models tables, and counted nowhere else. \
             Left out: {}.",
            if left_out.is_empty() { "none".to_string() } else { left_out.join(", ") }
        )
    } else {
        "This profile's models are not meant to learn their task: its tables check the schema and say nothing about a defense.".into()
    };
    format!(
        "\n**Seeds.** Even model indices form the calibration half, odd ones the test half: anything fit to data is fit on the \
         calibration half, and the tables give the test half first.\n\n- calibration: {}\n- test: {}\n\n{gate}\n",
        ids(Half::Calibration),
        ids(Half::Test)
    )
}

/// Per class, whether the backdoor took: the detection rows of an attack whose models did not
/// learn it compare benign models with models that are benign in effect.
fn attack_table(r: &BenchResults, task: Task) -> String {
    let unit = task.unit_name();
    let mut md = format!(
        "\n### Models per class (mean, and range of AE, in {unit}; an attack whose AE stays far above the clean error did not take)\n\n\
         | class | models | clean error | AE | DAE | training |\n|---|---|---|---|---|---|\n"
    );
    let classes = std::iter::once(None).chain(r.config.attacks.iter().map(|a| Some(a.as_str())));
    for class in classes {
        let models: Vec<_> = r.models.iter().filter(|m| m.task == task && m.attack.as_deref() == class).collect();
        if models.is_empty() {
            continue;
        }
        let ae: Vec<f64> = models.iter().filter_map(|m| m.errors.ae_deg).collect();
        let (ae, dae) = if ae.is_empty() {
            ("–".to_string(), "–".to_string())
        } else {
            let (lo, hi) = ae.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            (format!("{:.2} ({lo:.2}–{hi:.2})", mean(ae.iter().copied())), format!("{:.2}", mean(models.iter().filter_map(|m| m.errors.dae_deg))))
        };
        md.push_str(&format!(
            "| {} | {} | {:.2} | {ae} | {dae} | {:.0} s |\n",
            class.unwrap_or("benign"),
            models.len(),
            mean(models.iter().map(|m| m.errors.clean_deg)),
            mean(models.iter().map(|m| m.train_s)),
        ));
    }
    md
}
