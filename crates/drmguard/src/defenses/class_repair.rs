//! A classifier's repair: the scan's mask trigger, with the class blend and the class warp
//! beside it. A mask expresses a patch; it covers only the corner of a blend that sufficed and
//! cannot express a warp, so each shape is reversed in its own form ([`super::blend`],
//! [`super::warp`]) and unlearnt with the mask, each on its own share of the clean set.

use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;

use super::blend::{BlendConfig, blend_target, reverse_class_blends};
use super::neural_cleanse::NeuralCleanseConfig;
use super::trigger::{Alternating, ReversedTrigger};
use super::unlearn::{UnlearnConfig, repair_finding};
use super::warp::{WarpConfig, reverse_class_warps, warp_target};
use super::{CleanSet, Finding, Repair, Suspect};
use crate::error::{Error, Result};

/// The shapes reversed beside the mask (the default: none).
#[derive(Debug, Clone, Default)]
pub struct Shapes {
    /// Whether the class blend is reversed.
    pub blend: bool,
    /// The class warp's settings, when it is reversed.
    pub warp: Option<WarpConfig>,
}

impl Shapes {
    /// Both shapes, each under its own switch.
    pub fn both(blend: &BlendConfig, warp: &WarpConfig) -> Self {
        Shapes { blend: blend.enabled, warp: warp.enabled.then(|| warp.clone()) }
    }
}

/// `finding`'s trigger joined by the class blend and the class warp that `shapes` switch on,
/// when the suspect is a classifier and the finding carries a trigger; the blend is searched
/// with `search` (the repair's per-class search settings). With each shape's summary for the
/// repair's record.
pub fn with_shapes(mut finding: Finding, suspect: &Suspect, clean: &CleanSet, search: &NeuralCleanseConfig, shapes: &Shapes, device: &Device) -> Result<(Finding, Vec<(&'static str, serde_json::Value)>)> {
    let Some(mask) = finding.trigger.clone() else {
        return Ok((finding, Vec::new()));
    };
    if !suspect.task.is_classification() {
        return Ok((finding, Vec::new()));
    }
    let mut triggers: Vec<Arc<dyn ReversedTrigger>> = vec![mask];
    let mut summaries = Vec::new();
    if shapes.blend {
        let started = Instant::now();
        let blends = reverse_class_blends(search, suspect, clean, finding.seed, device)?;
        if let Some(chosen) = blend_target(&blends) {
            tracing::info!(class = chosen, alpha = blends[chosen].mask_share, "blend chosen for unlearning");
            summaries.push((
                "blend",
                serde_json::json!({
                    "class": chosen,
                    "alpha": blends[chosen].mask_share,
                    "classes": blends.iter().enumerate().map(|(k, b)| serde_json::json!({ "class": k, "alpha": b.mask_share, "succeeded": b.succeeded })).collect::<Vec<_>>(),
                    "seconds": started.elapsed().as_secs_f64(),
                }),
            ));
            let blend = blends.into_iter().nth(chosen).expect("the chosen class indexes the blends");
            triggers.push(Arc::new(blend.trigger.to_device(device)));
        } else {
            tracing::info!("no class blend reached its class; none unlearnt");
        }
    }
    if let Some(config) = &shapes.warp {
        let started = Instant::now();
        let warps = reverse_class_warps(suspect, clean, config, finding.seed, device)?;
        let chosen = warp_target(&warps).ok_or_else(|| Error::Numerical("the warp reversal searched no class".into()))?;
        let unlearnt = warps[chosen].success >= config.min_success;
        tracing::info!(class = chosen, success = warps[chosen].success, unlearnt, "warp chosen for unlearning");
        summaries.push((
            "warp",
            serde_json::json!({
                "class": chosen,
                "unlearnt": unlearnt,
                "success": warps[chosen].success,
                "mean_shift_px": warps[chosen].mean_shift,
                "classes": warps.iter().map(|w| serde_json::json!({ "class": w.class, "success": w.success, "mean_shift_px": w.mean_shift })).collect::<Vec<_>>(),
                "seconds": started.elapsed().as_secs_f64(),
                "config": config,
            }),
        ));
        if unlearnt {
            let warp = warps.into_iter().nth(chosen).expect("the chosen class indexes the warps");
            triggers.push(Arc::new(warp.trigger));
        }
    }
    if triggers.len() > 1 {
        finding.trigger = Some(Arc::new(Alternating(triggers)));
    }
    Ok((finding, summaries))
}

/// [`repair_finding`] with the shapes of [`with_shapes`] beside the finding's trigger; each
/// shape's summary joins the record under its name.
pub fn repair_with_shapes(finding: Finding, suspect: &Suspect, clean: &CleanSet, unlearn: &UnlearnConfig, search: &NeuralCleanseConfig, shapes: &Shapes, device: &Device) -> Result<Repair> {
    let (finding, summaries) = with_shapes(finding, suspect, clean, search, shapes, device)?;
    let mut repair = repair_finding(&finding, suspect, clean, unlearn, device)?;
    if let Some(record) = repair.record.as_object_mut() {
        for (name, summary) in summaries {
            record.insert(name.into(), summary);
        }
    }
    Ok(repair)
}
