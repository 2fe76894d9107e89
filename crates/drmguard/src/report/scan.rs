//! The common scan report of every detector: `report.json` for machines, `report.md` and the
//! detector's pictures for people, and `config.json` with its resolved settings.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::defenses::{CleanSet, Finding, Suspect};
use crate::error::{Error, Result};
use crate::figures::reversed::write_png;
use crate::io::{write_atomic, write_json, write_json_timed};

/// Writes the report of `finding` on the model at `model_path` into the folder `out`.
///
/// `report.json` holds the common fields (defense, backdoored, score, threshold, margin,
/// suspicion, seed, clean set, config, the scalar `signals` where the detector has them) and, at
/// the top level too, the detector's own details (DRMGuard's estimated target, RAV, …); the wall
/// times (`elapsed_s`, seconds per step) stand apart in its `timing` section.
pub fn write_scan_report(out: &Path, model_path: &Path, suspect: &Suspect, clean: &CleanSet, finding: &Finding) -> Result<()> {
    let d = &finding.detection;
    let mut report = json!({
        "model": model_path,
        "task": suspect.task,
        "output_names": suspect.output_names,
        "defense": d.defense,
        "backdoored": d.backdoored,
        "score": d.score,
        "threshold": d.threshold,
        "margin": d.margin,
        "suspicion": d.suspicion,
        "rule": finding.rule,
        "elapsed_s": d.elapsed_s,
        "seed": finding.seed,
        "clean_set": clean.describe(),
        "clean_images": clean.len(),
        "config": finding.config,
        "figures": finding.figures.iter().map(|f| &f.file).collect::<Vec<_>>(),
    });
    if !d.signals.is_empty() {
        report["signals"] = json!(d.signals);
    }
    let (Value::Object(common), Value::Object(details)) = (&mut report, &d.details) else {
        return Err(Error::Numerical(format!("{}'s details are not a JSON object", d.defense)));
    };
    merge_details(common, details);
    write_json_timed(&out.join("report.json"), &report)?;
    write_json(&out.join("config.json"), &finding.config)?;
    for figure in &finding.figures {
        write_png(&figure.image, &out.join(&figure.file))?;
    }
    write_atomic(&out.join("report.md"), markdown(model_path, suspect, clean, finding).as_bytes())
}

/// Adds the detector's details beside the common fields; a common field keeps its value.
fn merge_details(common: &mut Map<String, Value>, details: &Map<String, Value>) {
    for (key, value) in details {
        common.entry(key.clone()).or_insert_with(|| value.clone());
    }
}

fn markdown(model_path: &Path, suspect: &Suspect, clean: &CleanSet, finding: &Finding) -> String {
    let d = &finding.detection;
    let mut md = format!(
        "# drmguard scan: {}\n\n**Verdict: {}.** {} score = **{:.4}**, threshold = {} ({}; margin {:+.4}, positive = looks benign).\n\n\
         | | value |\n|---|---|\n| task | {} ({}) |\n| defense | {} |\n| clean set | {} ({} images) |\n",
        model_path.display(),
        if d.backdoored { "backdoored" } else { "no backdoor found" },
        d.defense,
        d.score,
        d.threshold,
        finding.rule,
        d.margin,
        suspect.task,
        suspect.output_names.join(", "),
        d.defense,
        clean.describe(),
        clean.len(),
    );
    for (name, value) in &finding.rows {
        md.push_str(&format!("| {name} | {value} |\n"));
    }
    md.push_str(&format!("| seed | {} |\n| elapsed | {:.0} s |\n", finding.seed, d.elapsed_s));
    for figure in &finding.figures {
        md.push_str(&format!("\n![{}]({})\n\n{}\n", figure.file, figure.file, figure.caption));
    }
    md
}
