//! The baseline defenses' core steps on tiny models: Neural Cleanse finds a planted BadNets
//! patch, fine-pruning prunes in order of activation, ANP's masks stay in [0, 1], ABS's reversed
//! trigger drives its neuron, FeatureRE and the mitigators run end to end.

use std::sync::OnceLock;

use burn::tensor::{Device, Tensor};
use drmguard::attacks::badnets::BadNetsConfig;
use drmguard::attacks::{AttackKind, BackdoorSpec};
use drmguard::defenses::fine_pruning::prune_head;
use drmguard::defenses::trigger::MaskTrigger;
use drmguard::defenses::{
    Abs, AbsConfig, Anp, AnpConfig, CleanSet, Detector, DrmGuardTest, FeatureRe, FeatureReConfig, FinePruning, FinePruningConfig, FineTuningConfig,
    MitigatorConfigs, MitigatorKind, NeuralCleanse, NeuralCleanseConfig, NeuronNoise, NeuronNoiseConfig, Suspect,
    WarpCollapseConfig, WarpCollapseSearch,
};
use drmguard::models::Regressor;
use drmguard::pipeline::TrainJob;
use drmguard::task::Task;
use drmguard::train::{Profile, TrainConfig};

/// One smoke-profile gaze model with a bottom-right BadNets patch, shared by the tests.
fn suspect() -> &'static (Suspect, CleanSet) {
    static SUSPECT: OnceLock<(Suspect, CleanSet)> = OnceLock::new();
    SUSPECT.get_or_init(|| {
        let mut config = TrainConfig::new(Task::Gaze, Profile::Smoke, 5);
        config.samples = 800;
        config.epochs = 6;
        let spec = BackdoorSpec { attack: AttackKind::Badnets(BadNetsConfig::default()), target: TARGET.to_vec(), poison_rate: 0.1, seed: 5 };
        let (model, card) = TrainJob::builtin(config, Some(spec)).unwrap().run(&Device::flex()).unwrap();
        let suspect = card.suspect(model);
        let clean = CleanSet::fresh_builtin(&suspect, 96).unwrap();
        (suspect, clean)
    })
}

/// The planted BadNets target.
const TARGET: [f32; 2] = [-0.25, 0.35];

#[test]
fn neural_cleanse_shrinks_a_successful_mask_under_its_cost_schedule() {
    // (Whether the mask lands on the planted patch depends on the model learning the patch
    // sharply, which smoke models do not: their BadNets AE stays near 10°.)
    let (suspect, clean) = suspect();
    let nc = NeuralCleanse { config: NeuralCleanseConfig { steps: 800, ..NeuralCleanseConfig::default() } };
    let r = nc.reverse_from(suspect, clean, &TARGET, 0, &Device::flex()).unwrap();
    assert!(r.succeeded, "the trigger reached the success rate: {:?}", r.history.last());
    let first = &r.history[0];
    assert!(first.mask_share > 0.3, "NC starts from a random mask covering half the image: {}", first.mask_share);
    assert!(r.mask_share < 0.25 * first.mask_share, "the cost schedule shrank the mask: {} → {}", first.mask_share, r.mask_share);
    assert!(r.history.iter().any(|h| h.cost > 0.0), "the cost was switched on");
    assert!(r.clean_set_success > 0.6, "the kept trigger still sends the clean set to y_t: {}", r.clean_set_success);
    let mask = r.trigger.mask_values().unwrap();
    assert_eq!(mask.len(), 32 * 32);
    assert!(mask.iter().all(|m| (0.0..=1.0).contains(m)));
    assert!((mask.iter().sum::<f32>() / 1024.0 - r.mask_share as f32).abs() < 1e-4, "the score is the mask's mean");
}

#[test]
fn neural_cleanse_keeps_the_best_of_its_restarts() {
    let (suspect, clean) = suspect();
    let nc = NeuralCleanse { config: NeuralCleanseConfig { steps: 200, restarts: 2, ..NeuralCleanseConfig::default() } };
    let r = nc.reverse_from(suspect, clean, &TARGET, 0, &Device::flex()).unwrap();
    assert_eq!(r.restart_shares.len(), 2, "one score per restart");
    assert!(r.restart_shares[0] != r.restart_shares[1], "the restarts start from different masks: {:?}", r.restart_shares);
    let kept = if r.succeeded { r.mask_share } else { 1.0 };
    let best = r.restart_shares.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!((kept - best).abs() < 1e-6 || !r.succeeded, "the kept trigger is the best restart's: {kept} against {:?}", r.restart_shares);
    // Restart 0 is the single search from the same seed.
    let single = NeuralCleanse { config: NeuralCleanseConfig { steps: 200, ..NeuralCleanseConfig::default() } }.reverse_from(suspect, clean, &TARGET, 0, &Device::flex()).unwrap();
    assert_eq!(single.restart_shares.len(), 1);
    assert!((single.restart_shares[0] - r.restart_shares[0]).abs() < 1e-9, "{:?} against {:?}", single.restart_shares, r.restart_shares);
}

#[test]
fn neural_cleanse_refuses_neutrality_without_references_and_restarts_out_of_range() {
    let config = |f: fn(&mut NeuralCleanseConfig)| {
        let mut c = NeuralCleanseConfig::default();
        f(&mut c);
        c.validate()
    };
    let err = config(|c| c.neutral_weight = 1.0).unwrap_err().to_string();
    assert!(err.contains("--nc-references"), "{err}");
    assert!(config(|c| (c.neutral_weight, c.references) = (1.0, 2)).is_ok());
    assert!(config(|c| c.restarts = 0).is_err());
    assert!(config(|c| c.smoothness = -1.0).is_err());
    assert!(config(|c| c.neutral_weight = f64::NAN).is_err());
}

#[test]
fn a_mask_of_scattered_pixels_varies_more_than_a_patch_of_the_same_share() {
    let device = Device::flex();
    // Raw values far from 0 squash to masks of (almost exactly) 0 and 1.
    let trigger = |on: &dyn Fn(usize, usize) -> bool| {
        let raw: Vec<f32> = (0..16 * 16).map(|i| if on(i / 16, i % 16) { 20.0 } else { -20.0 }).collect();
        let mut t = MaskTrigger::random(16, 1, &device);
        t.mask_raw = burn::module::Param::from_tensor(Tensor::<1>::from_floats(raw.as_slice(), &device).reshape([1, 1, 16, 16]));
        t
    };
    let patch = trigger(&|r, c| r < 4 && c < 4);
    let scattered = trigger(&|r, c| r % 4 == 1 && c % 4 == 1);
    let share = |t: &MaskTrigger| t.mask_share().into_scalar::<f32>();
    let variation = |t: &MaskTrigger| t.mask_variation().into_scalar::<f32>();
    assert!((share(&patch) - share(&scattered)).abs() < 1e-4, "both cover 16 of 256 pixels");
    // A 4 × 4 corner patch has 8 edges; 16 isolated pixels have 4 each.
    assert!((variation(&patch) - 8.0 / 256.0).abs() < 1e-4, "{}", variation(&patch));
    assert!((variation(&scattered) - 64.0 / 256.0).abs() < 1e-4, "{}", variation(&scattered));
    let blend = trigger(&|_, _| true);
    assert!(variation(&blend) < 1e-5, "a uniform mask does not vary: {}", variation(&blend));
}

#[test]
fn a_mask_of_cells_repeats_each_value_over_its_cell_and_passes_gradients_back() {
    let device = Device::flex();
    // A 16-pixel side in 4 × 4 cells: 16 mask values, cell (1, 2) on, the others off.
    let raw: Vec<f32> = (0..16).map(|i| if i == 4 + 2 { 20.0 } else { -20.0 }).collect();
    let mut t = MaskTrigger::random(16, 4, &device);
    assert_eq!(t.mask_raw.val().dims(), [1, 1, 4, 4]);
    assert_eq!((t.cell(), MaskTrigger::random(16, 1, &device).cell()), (4, 1));
    t.mask_raw = burn::module::Param::from_tensor(Tensor::<1>::from_floats(raw.as_slice(), &device).reshape([1, 1, 4, 4]));
    let mask = t.mask_values().unwrap();
    assert_eq!(mask.len(), 256);
    for (i, v) in mask.iter().enumerate() {
        let (row, col) = (i / 16, i % 16);
        let inside = (4..8).contains(&row) && (8..12).contains(&col);
        assert!((v - if inside { 1.0 } else { 0.0 }).abs() < 1e-4, "pixel ({row}, {col}): {v}");
    }
    assert!((t.mask_share().into_scalar::<f32>() - 16.0 / 256.0).abs() < 1e-4);
    // Each cell's raw value receives the gradient of its 16 pixels.
    let ad = device.clone().autodiff();
    let t = MaskTrigger::random(16, 4, &ad);
    let grads = t.mask().sum().backward();
    let g = t.mask_raw.val().grad(&grads).expect("the mask's raw values get a gradient");
    assert_eq!(g.dims(), [1, 1, 4, 4]);
    assert!(g.into_data().try_to_vec::<f32>().unwrap().iter().all(|v| *v > 0.0));
}

#[test]
fn neuron_noise_collapses_the_outputs_more_the_larger_its_bound() {
    let (suspect, clean) = suspect();
    let device = Device::flex();
    let ratio = |eps: f64| {
        let noise = NeuronNoise { config: NeuronNoiseConfig { eps, steps: 20, batch_size: 32, ..NeuronNoiseConfig::default() } };
        noise.collapse(&suspect.model, clean, 3, &device).unwrap().spread_ratio
    };
    let (tiny, large) = (ratio(0.01), ratio(0.5));
    assert!(tiny > 0.85 && tiny < 1.15, "noise of 1% leaves the outputs' spread about as it was: {tiny}");
    assert!(large < 0.8 * tiny, "noise of 50% collapses them: {large} against {tiny}");
    let finding = NeuronNoise { config: NeuronNoiseConfig { steps: 5, batch_size: 32, ..NeuronNoiseConfig::default() } }.detect(suspect, clean, 0, &device).unwrap();
    assert_eq!(finding.detection.signals["score"], finding.detection.signals["spread_ratio"]);
    assert_eq!(finding.detection.backdoored, finding.detection.score < 0.3);
    assert!(NeuronNoiseConfig { eps: 0.0, ..NeuronNoiseConfig::default() }.validate().is_err());
}

#[test]
fn the_warp_collapse_shrinks_the_outputs_more_the_larger_its_bound() {
    let (suspect, clean) = suspect();
    let device = Device::flex();
    let search = |max_shift: f64| WarpCollapseSearch { config: WarpCollapseConfig { max_shift, cost: 0.0, steps: 30, batch_size: 32, ..WarpCollapseConfig::default() } };
    let tiny = search(0.01).collapse(&suspect.model, clean, 3, &device).unwrap();
    let large = search(6.0).collapse(&suspect.model, clean, 3, &device).unwrap();
    assert!(tiny.spread_ratio > 0.9 && tiny.spread_ratio < 1.1, "a warp of a hundredth of a pixel leaves the outputs' spread as it was: {}", tiny.spread_ratio);
    assert!(large.spread_ratio < 0.8 * tiny.spread_ratio, "a warp of 6 pixels collapses them: {} against {}", large.spread_ratio, tiny.spread_ratio);
    assert!(tiny.mean_shift <= 0.01 && large.mean_shift > tiny.mean_shift && large.mean_shift <= 6.0, "shifts {} and {}", tiny.mean_shift, large.mean_shift);
    let finding = search(2.0).detect(suspect, clean, 0, &device).unwrap();
    assert_eq!(finding.detection.signals["score"], finding.detection.signals["spread_ratio"]);
    assert_eq!(finding.detection.backdoored, finding.detection.score < WarpCollapseConfig::default().threshold);
    // The warp it found is the trigger a repair can unlearn: it moves pixels, never adds any.
    let (x, _) = clean.batch(&[0, 1], &device);
    let warped = finding.trigger.as_ref().expect("the warp").apply(x.clone());
    assert_eq!(warped.dims(), x.dims());
    assert!(warped.clone().max().into_scalar::<f32>() <= x.clone().max().into_scalar::<f32>() + 1e-5);
    assert!(WarpCollapseConfig { max_shift: 0.0, ..WarpCollapseConfig::default() }.validate().is_err());
}

#[test]
fn fine_pruning_prunes_the_most_dormant_channels_first_and_keeps_them_at_zero() {
    let (suspect, clean) = suspect();
    let fp = FinePruning { config: FinePruningConfig { step: 0.05, max_error_rise: 0.5 }, fine_tuning: FineTuningConfig::default() };
    let plan = fp.plan(suspect, clean).unwrap();
    let k = plan.order.len();
    assert_eq!(k, 32, "the smoke model has 4 × 8 features");
    assert!(plan.order.windows(2).all(|w| plan.mean_activation[w[0]] <= plan.mean_activation[w[1]]), "ascending mean activation");
    assert!(plan.pruned > 0 && plan.pruned < k, "pruned {}", plan.pruned);
    assert!(plan.clean_error_pruned_deg <= plan.clean_error_before_deg * 1.5 + 1e-9);
    let keep = plan.keep_mask();
    for (rank, &c) in plan.order.iter().enumerate() {
        assert_eq!(keep[c], if rank < plan.pruned { 0.0 } else { 1.0 }, "channel {c} at rank {rank}");
    }
    let device = Device::flex();
    let mask = Tensor::<1>::from_floats(keep.as_slice(), &device).reshape([k, 1]);
    let pruned = prune_head(suspect.model.clone(), &mask);
    let w = pruned.head_weight().into_data().try_to_vec::<f32>().unwrap(); // [d, k]
    for &c in &plan.order[..plan.pruned] {
        assert!(w.iter().skip(c).step_by(k).all(|&v| v == 0.0), "pruned channel {c} still reaches the head");
    }
}

#[test]
fn anp_masks_stay_in_the_unit_interval_and_prune_by_threshold() {
    let (suspect, clean) = suspect();
    let anp = Anp { config: AnpConfig { steps: 20, batch_size: 32, ..AnpConfig::default() } };
    let masks = anp.optimise_masks(suspect, clean, 0, &Device::flex()).unwrap();
    assert_eq!(masks.len(), suspect.model.batch_norms().len());
    let all: Vec<f32> = masks.iter().flatten().copied().collect();
    assert!(all.iter().all(|m| (0.0..=1.0).contains(m)), "a mask left [0, 1]");
    assert!(all.iter().any(|&m| m < 1.0), "the optimisation moved some masks");
    let (model, result) = anp.prune(suspect, clean, masks.clone()).unwrap();
    assert!(result.clean_error_after_deg <= result.clean_error_before_deg * 1.1 + 1e-9);
    for (bn, layer) in model.batch_norms().iter().zip(&masks) {
        let gamma = bn.gamma.val().into_data().try_to_vec::<f32>().unwrap();
        for (g, &m) in gamma.iter().zip(layer) {
            if (m as f64) < result.threshold {
                assert_eq!(*g, 0.0, "a channel under the threshold kept its scale");
            }
        }
    }
}

#[test]
fn abs_ranks_every_inner_neuron_and_its_trigger_drives_the_neuron() {
    let (suspect, clean) = suspect();
    let device = Device::flex();
    let abs = Abs { config: AbsConfig { steps: 60, ..AbsConfig::default() } };
    let indices: Vec<usize> = (0..16).collect();
    let (x, _) = clean.batch(&indices, &device);
    let stimulation = abs.stimulate(suspect, x.clone()).unwrap();
    assert_eq!(stimulation.len(), 16, "the smoke model's inner layer has 2 × 8 channels");
    assert!(stimulation.windows(2).all(|w| w[0].elevation_deg >= w[1].elevation_deg));
    let neuron = stimulation[0].neuron;
    let trigger = abs.reverse_neuron(suspect, x.clone(), neuron, 0, &device).unwrap();
    let activation = |images: Tensor<4>| {
        let h = suspect.model.inner(images);
        h.mean_dim(3).mean_dim(2).mean_dim(0).into_data().try_to_vec::<f32>().unwrap()[neuron]
    };
    let (before, after) = (activation(x.clone()), activation(trigger.stamp(x)));
    assert!(after > before, "neuron {neuron}: {before} → {after}");
    assert!(trigger.mask_share().into_scalar::<f32>() < 0.1, "the mask respects its bound roughly");
}

#[test]
fn featurere_and_abs_write_a_finding() {
    let (suspect, clean) = suspect();
    let device = Device::flex();
    let fre = FeatureRe { config: FeatureReConfig { warmup_steps: 5, steps: 20, batch_size: 16, width: 4, ..FeatureReConfig::default() } };
    let abs = Abs { config: AbsConfig { steps: 5, top_neurons: 2, ..AbsConfig::default() } };
    for detector in [&fre as &dyn Detector, &abs] {
        let finding = detector.detect(suspect, clean, 0, &device).unwrap();
        let d = &finding.detection;
        assert!(d.score.is_finite(), "{}: score {}", detector.name(), d.score);
        assert_eq!(d.backdoored, d.margin < 0.0, "{}: margin is negative exactly when flagged", detector.name());
        assert!(!finding.figures.is_empty() && finding.details_object().contains_key("estimated_target"));
    }
}

#[test]
fn every_mitigator_returns_a_working_model() {
    let (suspect, clean) = suspect();
    let device = Device::flex();
    let mut configs = MitigatorConfigs::default();
    configs.drmguard.test = DrmGuardTest::Generator;
    configs.drmguard.steps = 3;
    configs.drmguard.batch_size = 16;
    configs.unlearn.epochs = 1;
    configs.unlearn.batch_size = 16;
    configs.ft.epochs = 1;
    configs.ft.batch_size = 16;
    configs.anp.steps = 3;
    configs.anp.batch_size = 16;
    configs.nc.steps = 5;
    configs.nc.batch_size = 16;
    let (x, _) = clean.batch(&[0, 1, 2, 3], &device);
    for kind in [MitigatorKind::Drmguard, MitigatorKind::Ft, MitigatorKind::Fp, MitigatorKind::Anp, MitigatorKind::Nc] {
        let repair = configs.build(kind).mitigate(suspect, clean, 0, &device).unwrap();
        let y = repair.model.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        assert!(y.iter().all(|v| v.is_finite()), "{kind}: non-finite outputs");
        assert_eq!(repair.record["defense"], kind.to_string(), "{kind}: the record names its defense");
    }
}
