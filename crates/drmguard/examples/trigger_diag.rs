use burn::tensor::Device;
use drmguard::defenses::{CleanSet, DrmGuard, DrmGuardConfig, Suspect};
fn main() {
    let device = Device::flex();
    let refs: usize = std::env::var("REFS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    for path in std::env::args().skip(1) {
        let (model, card) = drmguard::model_file::load(std::path::Path::new(&path), &device).unwrap();
        let Some(spec) = card.backdoor.clone() else { continue };
        let trigger = spec.trigger(card.task, card.model.input_size).unwrap();
        let suspect = Suspect::new(model, &card);
        let clean = CleanSet::fresh_builtin(&suspect, CleanSet::default_size(&suspect)).unwrap();
        let dg = DrmGuard::new(DrmGuardConfig { references: refs, ..Default::default() });
        let s = dg.assess_edit(&suspect, &clean, &|x| trigger.attack.apply(x), 0, &device).unwrap();
        println!("{} {} I(f)={:.4} err_ratio={:.3} spread={:.3} rav={:.3} fdisp={:.3} fshift={:.3} refs={:?} contrast={:?}", path, spec.attack.name(), s.score, s.error_ratio, s.spread_ratio, s.rav, s.feature_dispersion_ratio, s.feature_shift, s.reference_spread_ratios, s.contrast);
    }
}
