//! A detection as a report: the summary rows, the reversed images and the attention map.

use burn::module::Module;
use burn::tensor::Device;

use super::{Collapse, DrmGuard, Reversal};
use crate::defenses::{CleanSet, Detection, Figure, Finding, Suspect};
use crate::error::{Error, Result};
use crate::figures::reversed::{map_figure, reversal_figure};

impl DrmGuard {
    /// The report of a detection: the summary rows, the reversed images and the attention map.
    pub fn finding(detection: Detection, reversal: &Reversal, suspect: &Suspect, clean: &CleanSet, device: &Device) -> Result<Finding> {
        let (c, s) = (&reversal.config, &reversal.summary);
        let shown: Vec<usize> = (0..clean.len().min(8)).collect();
        let (originals, reversed) = reversal.image_pairs(clean, &shown, device)?;
        // Full scale at 4 ε: differences of the size that decides the verdict stay visible.
        let full = 4.0 * c.epsilon as f32;
        let mut figures = vec![Figure {
            file: "reversed.png".into(),
            caption: format!(
                "Rows: clean images, G(x), and |G(x) − x| (white = {full:.2}). A backdoored model needs only a small, localised \
                 change (its trigger) to send every image to one output; a benign model needs a large one."
            ),
            image: reversal_figure(&originals, &reversed, full)?,
        }];
        if let Some(map) = &reversal.attention {
            figures.push(Figure {
                file: "attention.png".into(),
                caption: "The momentum attention map M of the MTR: where the model's gradient on the clean images was large \
                          (white). Edits there cost 1 + γ·M (`--mtr loss`), or their gradient is divided by it (`--mtr gradient`)."
                    .into(),
                image: map_figure(map, suspect.image_size())?,
            });
        }
        let deg = |v: &[f32]| suspect.task.format_values(v);
        let unit = suspect.task.unit();
        let spread = |v: &[f64]| v.iter().map(|x| format!("{x:.2}{unit}")).collect::<Vec<_>>().join(", ");
        let decides = |m: Collapse| if m == c.collapse { format!(", a collapse below {}", c.collapse_threshold()) } else { String::new() };
        let mut rows = vec![
            (
                "DRMGuard".into(),
                format!(
                    "{} generator (width {}{}), r_f {:?}, MTR {:?}, λ1 = {}, λ2 = {}",
                    c.generator,
                    c.generator_width,
                    if c.coordinates { ", with coordinates" } else { "" },
                    c.feature_reg,
                    c.mtr,
                    c.lambda1,
                    c.lambda2
                ),
            ),
            ("estimated target (mean of f(G(x)))".into(), deg(&s.estimated_target)),
            (
                "spread of f(G(x)) / of f(x)".into(),
                format!("{} / {} (spread ratio {:.3}{})", spread(&s.output_std_deg), spread(&s.clean_output_std_deg), s.spread_ratio, decides(Collapse::Spread)),
            ),
            (
                "spread of f(G(x)) / the model's clean error".into(),
                format!("{} / {} (error ratio {:.3}{})", spread(&s.output_std_deg), spread(&s.clean_error_deg), s.error_ratio, decides(Collapse::Error)),
            ),
            ("RAV of the reversed images".into(), format!("{:.4}", s.rav)),
            (
                "features of G(x): dispersion ratio, shift".into(),
                format!("{:.3} (total variance over the clean images'), {:.2} clean standard deviations", s.feature_dispersion_ratio, s.feature_shift),
            ),
            ("steps".into(), match s.steps.checked_sub(c.steps).filter(|&extra| extra > 0) {
                Some(extra) => format!("{} ({} + {extra} while the outputs stayed collapsed and I(f) fell; {:.3} s/step)", s.steps, c.steps, s.seconds_per_step),
                None => format!("{} ({:.3} s/step)", s.steps, s.seconds_per_step),
            }),
        ];
        if let Some(contrast) = s.contrast {
            let refs: Vec<String> = s
                .references
                .iter()
                .zip(&s.reference_spread_ratios)
                .map(|(r, ratio)| format!("seed {}: spread ratio {ratio:.3} (held-out error {:.2}{unit}, mean predictor {:.2}{unit})", r.seed, r.heldout_error_deg, r.heldout_mean_predictor_deg))
                .collect();
            rows.push((format!("{} reference models trained from the clean set (weight {}, floor {})", refs.len(), c.contrast_weight, c.contrast_floor), refs.join("; ")));
            rows.push((
                "contrast: the suspect's spread ratio over the references'".into(),
                format!("{contrast:.3} (far below 1: the edit collapses the suspect alone, as a trigger does; near 1: every model of the task, as a feature of the task does)"),
            ));
        }
        if !s.restarts.is_empty() {
            let starts: Vec<String> = s.restarts.iter().map(|r| format!("seed {}: I(f) {:.4}, {} ratio {:.3}", r.seed, r.score, c.collapse, c.collapse_ratio(r.spread_ratio, r.error_ratio))).collect();
            rows.push((format!("{} starts (the closest kept)", s.restarts.len()), starts.join("; ")));
        }
        Ok(Finding {
            detection,
            config: serde_json::to_value(&c.config).map_err(|e| Error::Numerical(e.to_string()))?,
            seed: reversal.seed,
            rule: format!(
                "I(f) = mean |G(x) − x|; backdoored iff I(f) < ε and G collapsed the outputs ({} ratio < {})",
                c.collapse,
                c.collapse_threshold()
            ),
            rows,
            figures,
            trigger: Some(std::sync::Arc::new(reversal.generator.clone().to_device(device))),
        })
    }
}
