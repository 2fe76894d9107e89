//! DRMGuard (method.md §4–§6, §12): train a generator G on the clean set so that the frozen
//! model's outputs on G(x) collapse (λ1 · output variance), the penultimate features' angles to
//! the head's weight rows concentrate (λ2 · r_f), and G(x) stays close to x (L1, re-weighted by the
//! momentum attention map, MTR). If a small change suffices, I(f) = mean |G(x) − x| < ε, the model
//! is flagged. Mitigation ([`super::unlearn`]) fine-tunes the model on reversed images paired with
//! their true labels.
//!
//! Every open point of the method is a switch: the generator ([`GeneratorKind`]), r_f raw or
//! RAV-normalised ([`FeatureReg`]), and where the MTR weights enter ([`Mtr`]).

mod config;
mod records;
mod repair;
mod report;
mod reverse;
mod stats;

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{Device, Tensor};

pub use config::*;
pub use records::*;
pub use repair::DrmGuardRepair;
use reverse::{measure, reverse_once};
use stats::{SetStats, angle_and_output_stats};

use super::agnostic::{Agnostic, AgnosticConfig};
use super::warp_collapse::{WarpCollapseConfig, WarpCollapseSearch};
use super::references::{ReferenceConfig, References, reference_seed};
use super::trigger::Alternating;
use super::{CleanSet, Detection, Detector, Finding, Suspect};
use crate::error::{Error, Result};

/// The DRMGuard defense with a resolved config.
#[derive(Debug, Clone)]
pub struct DrmGuard {
    pub config: DrmGuardConfig,
    /// The settings of the calibrated verdict (`DrmGuardTest::Verdict`).
    pub verdict: AgnosticConfig,
    /// The warp collapse the verdict also reads on a regression model, when it does.
    pub warp: Option<WarpCollapseConfig>,
}

impl DrmGuard {
    /// DRMGuard with the verdict's default settings.
    pub fn new(config: DrmGuardConfig) -> Self {
        DrmGuard { config, verdict: AgnosticConfig::default(), warp: None }
    }

    /// DRMGuard whose verdict (`DrmGuardTest::Verdict`) reads `verdict`.
    pub fn with_verdict(config: DrmGuardConfig, verdict: AgnosticConfig) -> Self {
        DrmGuard { config, verdict, warp: None }
    }

    /// This DRMGuard with its verdict also reading the warp collapse under `warp` (none: the
    /// mask test alone).
    pub fn with_warp(self, warp: Option<WarpCollapseConfig>) -> Self {
        DrmGuard { warp, ..self }
    }

    /// Reverse-engineers a trigger and decides; the reversal is kept for mitigation.
    pub fn detect_with_reversal(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<(Detection, Reversal)> {
        let started = Instant::now();
        let reversal = self.reverse(suspect, clean, seed, device)?;
        let s = &reversal.summary;
        let mut details = serde_json::to_value(s).map_err(|e| Error::Numerical(e.to_string()))?;
        if let Some(fields) = details.as_object_mut() {
            let deg: Vec<f64> = s.estimated_target.iter().map(|&v| suspect.task.to_unit(v)).collect();
            fields.insert("estimated_target_deg".into(), serde_json::json!(deg));
            fields.insert("target_spread_deg".into(), serde_json::json!(s.output_std_deg));
            fields.insert("clean_output_spread_deg".into(), serde_json::json!(s.clean_output_std_deg));
        }
        let c = &reversal.config;
        let mut detection = Detection::decide("drmguard", s.score, c.epsilon, true, started.elapsed().as_secs_f64(), details);
        // Both conditions at once, each measured against its own threshold: the model is flagged
        // iff the worse of I(f) / ε and collapse ratio / κ (or ρ) is below 1. The margin is in units of
        // I(f) (it is I(f) − ε whenever the collapse holds with room to spare).
        let worse = c.closeness(s);
        detection.backdoored = worse < 1.0;
        detection.margin = (worse - 1.0) * c.epsilon;
        detection.suspicion = -worse;
        let mut signals = vec![("score", s.score), ("error_ratio", s.error_ratio), ("spread_ratio", s.spread_ratio), ("rav", s.rav), ("closeness", worse)];
        signals.extend([("feature_dispersion_ratio", s.feature_dispersion_ratio), ("feature_shift", s.feature_shift)]);
        if let Some(contrast) = s.contrast {
            let references = s.reference_spread_ratios.iter().sum::<f64>() / s.reference_spread_ratios.len().max(1) as f64;
            signals.extend([("contrast", contrast), ("reference_spread_ratio", references)]);
        }
        detection.set_signals(signals);
        Ok((detection, reversal))
    }

    /// What an edit of the clean images does to the suspect, measured as a reversal is: I(f),
    /// the collapse ratios, RAV, the features' dispersion and, with references, their collapse
    /// and the contrast. The bench applies it to a backdoored model's true trigger, to tell a
    /// search that missed the trigger from an objective that cannot see it; a scan never does.
    pub fn assess_edit(&self, suspect: &Suspect, clean: &CleanSet, edit: &dyn Fn(Tensor<4>) -> Tensor<4>, seed: u64, device: &Device) -> Result<ReversalSummary> {
        let (config, clean_stats, references) = self.prepare(suspect, clean, seed, device)?;
        measure(&config, suspect, clean, &clean_stats, references.as_ref(), edit)
    }

    /// What every reversal and assessment of one scan shares: the resolved config, the clean
    /// set's statistics and the reference models, if any.
    fn prepare(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<(DrmGuardParams, SetStats, Option<References>)> {
        let config = self.config.resolved(suspect.task)?;
        clean.check_for(suspect, config.batch_size)?;
        let clean_stats = angle_and_output_stats(suspect, clean, None, config.batch_size)?;
        let references = match config.references {
            0 => None,
            n => Some(References::get(suspect, clean, &ReferenceConfig::new(n), reference_seed(seed), device)?),
        };
        Ok((config, clean_stats, references))
    }

    /// Trains G on the clean set against the frozen suspect (method.md §12): `restarts`
    /// generators (seeds `seed`, `seed + 1`, …) and keeps the one closest to a
    /// backdoor verdict.
    pub fn reverse(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Reversal> {
        // The clean set's statistics and the references are the same for every start.
        let (config, clean_stats, references) = self.prepare(suspect, clean, seed, device)?;
        let references = references.as_ref();
        if config.restarts == 1 {
            return reverse_once(&config, suspect, clean, &clean_stats, references, seed, device);
        }
        let mut best: Option<Reversal> = None;
        let mut records = Vec::new();
        for k in 0..config.restarts as u64 {
            let r = reverse_once(&config, suspect, clean, &clean_stats, references, seed.wrapping_add(k), device)?;
            let c = config.closeness(&r.summary);
            tracing::info!(start = k + 1, of = config.restarts, score = r.summary.score, error_ratio = r.summary.error_ratio, spread_ratio = r.summary.spread_ratio, "drmguard start done");
            records.push(RestartRecord { seed: r.seed, score: r.summary.score, spread_ratio: r.summary.spread_ratio, error_ratio: r.summary.error_ratio, closeness: c });
            if best.as_ref().is_none_or(|b| c < config.closeness(&b.summary)) {
                best = Some(r);
            }
        }
        let mut best = best.expect("at least one start");
        best.summary.restarts = records;
        Ok(best)
    }
}

impl Detector for DrmGuard {
    fn name(&self) -> &'static str {
        "drmguard"
    }

    fn detect(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Finding> {
        match self.config.test {
            DrmGuardTest::Generator => {
                let (detection, reversal) = self.detect_with_reversal(suspect, clean, seed, device)?;
                Self::finding(detection, &reversal, suspect, clean, device)
            }
            DrmGuardTest::Verdict => {
                let mut finding = Agnostic { config: self.verdict.clone() }.detect(suspect, clean, seed, device)?;
                finding.config = serde_json::json!({ "test": self.config.test, "verdict": finding.config });
                finding.rule = format!("the calibrated verdict of the input-agnostic reversal: {}", finding.rule);
                if let Some(warp) = self.warp.as_ref().filter(|_| !suspect.task.is_classification()) {
                    let warped = WarpCollapseSearch { config: warp.clone() }.detect(suspect, clean, seed, device)?;
                    finding = with_warp_test(finding, warped);
                }
                finding.detection.defense = self.name().into();
                Ok(finding)
            }
        }
    }
}

/// How far past its threshold a warp test's spread ratio is, in log units: ln(threshold / ratio),
/// positive when the test flags.
pub fn warp_margin(spread_ratio: f64, threshold: f64) -> f64 {
    (threshold / spread_ratio.max(1e-12)).ln()
}

/// The mask test's finding with the warp test beside it: flagged when either flags, scored by the
/// larger of the two margins, each in log units past its own threshold (the mask's
/// quality-adjusted log ratio less ln of its ratio; ln(the warp threshold / the spread ratio)),
/// so that 0 is where the verdict turns. A repair unlearns the mask's trigger, and the warp beside
/// it when the warp test flags (a warp backdoor survives the mask's unlearning).
fn with_warp_test(mut mask: Finding, warp: Finding) -> Finding {
    let (m, w) = (&mask.detection, &warp.detection);
    let mask_margin = m.score - m.threshold;
    let warp_margin = warp_margin(w.score, w.threshold);
    let score = mask_margin.max(warp_margin);
    let mut details = mask.details_object();
    details.insert("warp".into(), w.details.clone());
    let mut detection = Detection {
        defense: m.defense.clone(),
        backdoored: m.backdoored || w.backdoored,
        score,
        threshold: 0.0,
        margin: -score,
        suspicion: score,
        elapsed_s: m.elapsed_s + w.elapsed_s,
        details: serde_json::Value::Object(details),
        signals: m.signals.clone(),
    };
    detection.signals.insert("mask_margin".into(), mask_margin);
    detection.signals.insert("warp_margin".into(), warp_margin);
    for (name, value) in &w.signals {
        if name != "score" {
            detection.signals.insert(format!("warp_{name}"), *value);
        }
    }
    detection.signals.insert("score".into(), score);
    if detection.backdoored && w.backdoored {
        mask.trigger = match (mask.trigger.take(), warp.trigger) {
            (Some(m), Some(w)) => Some(Arc::new(Alternating(vec![m, w]))),
            (m, w) => m.or(w),
        };
    }
    mask.detection = detection;
    mask.rows.push(("warp test".into(), format!("spread ratio {:.3} against {} ({})", w.score, w.threshold, if w.backdoored { "flagged" } else { "not flagged" })));
    mask.rows.extend(warp.rows.into_iter().map(|(name, value)| (format!("warp: {name}"), value)));
    mask.figures.extend(warp.figures);
    mask.rows.push(("verdict".into(), format!("score {score:+.3} = max(mask {mask_margin:+.3}, warp {warp_margin:+.3}); flagged from 0 by either test")));
    if let Some(config) = mask.config.as_object_mut() {
        config.insert("warp".into(), warp.config);
    }
    mask.rule = format!("{}; and the warp test: {}; backdoored iff either test flags", mask.rule, warp.rule);
    mask
}

#[cfg(test)]
mod tests {
    use burn::tensor::Tensor;

    use super::*;
    use crate::defenses::ReversedTrigger;

    /// A trigger that leaves images as they are, known by its name.
    struct Named(&'static str);

    impl std::fmt::Debug for Named {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl ReversedTrigger for Named {
        fn apply(&self, x: Tensor<4>) -> Tensor<4> {
            x
        }

        fn unlearn_ratio(&self) -> f64 {
            0.2
        }
    }

    fn finding(defense: &str, score: f64, threshold: f64, low_is_backdoored: bool, trigger: &'static str) -> Finding {
        let mut detection = Detection::decide(defense, score, threshold, low_is_backdoored, 1.0, serde_json::json!({ "from": defense }));
        detection.set_signals(vec![("score", score), ("spread_ratio", score)]);
        Finding { detection, config: serde_json::json!({ "test": "verdict" }), seed: 0, rule: defense.into(), rows: Vec::new(), figures: Vec::new(), trigger: Some(Arc::new(Named(trigger))) }
    }

    #[test]
    fn either_test_flags_the_model_and_a_flagging_warp_is_unlearnt_beside_the_mask() {
        let threshold = 1.8f64.ln();
        // The warp collapses the outputs to 5% of their spread, against a threshold of 30%.
        let both = with_warp_test(finding("agnostic", 0.2, threshold, false, "mask"), finding("warp", 0.05, 0.3, true, "warp"));
        assert!(both.detection.backdoored);
        assert!((both.detection.score - 6f64.ln()).abs() < 1e-12, "the larger margin, ln(0.3 / 0.05): {}", both.detection.score);
        assert_eq!(both.detection.signals["mask_margin"], 0.2 - threshold);
        assert_eq!(both.detection.signals["warp_spread_ratio"], 0.05);
        assert_eq!(both.detection.details["warp"]["from"], "warp");
        assert_eq!(both.config["warp"]["test"], "verdict");
        let trigger = format!("{:?}", both.trigger);
        assert!(trigger.contains("Alternating") && trigger.contains("mask") && trigger.contains("warp"), "{trigger}");

        // A warp that leaves 80% of the spread: the mask test alone decides, and only the mask is
        // unlearnt.
        let mask_only = with_warp_test(finding("agnostic", 1.5, threshold, false, "mask"), finding("warp", 0.8, 0.3, true, "warp"));
        assert!(mask_only.detection.backdoored);
        assert_eq!(mask_only.detection.score, 1.5 - threshold);
        assert_eq!(format!("{:?}", mask_only.trigger), "Some(mask)");

        let neither = with_warp_test(finding("agnostic", 0.2, threshold, false, "mask"), finding("warp", 0.8, 0.3, true, "warp"));
        assert!(!neither.detection.backdoored && neither.detection.score < 0.0 && neither.detection.suspicion == neither.detection.score);
    }
}
