//! DRMGuard: the generators' shapes and range, reverse engineering on a smoke-profile model, and
//! detection on the small benchmark's first head-pose models (a BadNets model is flagged, its
//! benign twin is not).

use burn::tensor::{Device, Tensor};
use drmguard::attacks::badnets::BadNetsConfig;
use drmguard::attacks::{AttackKind, BackdoorSpec};
use drmguard::defenses::drmguard::{Collapse, FeatureReg, Mtr};
use drmguard::defenses::{CleanSet, DrmGuard, DrmGuardConfig, Suspect};
use drmguard::models::generator::{Generator, GeneratorKind};
use drmguard::models::Regressor;
use drmguard::pipeline::TrainJob;
use drmguard::task::Task;
use drmguard::train::{Profile, TrainConfig};

#[test]
fn generators_keep_the_shape_and_stay_in_the_unit_range() {
    let device = Device::flex();
    let x = Tensor::<4>::ones([2, 3, 16, 16], &device) * 0.5;
    for kind in [GeneratorKind::EncoderDecoder, GeneratorKind::Unet] {
        for residual in [None, Some(0.5)] {
            let g = Generator::new(kind, 4, residual, &device);
            let y = g.forward(x.clone());
            assert_eq!(y.dims(), [2, 3, 16, 16]);
            let v = y.into_data().try_to_vec::<f32>().unwrap();
            assert!(v.iter().all(|p| (0.0..=1.0).contains(p)), "{kind}: outside [0, 1]");
            if residual.is_some() {
                assert!(v.iter().all(|p| (p - 0.5).abs() < 1e-6), "{kind}: a residual generator starts as the identity");
            }
        }
    }
}

#[test]
fn a_generator_with_coordinates_starts_at_the_identity() {
    let device = Device::flex();
    let x = Tensor::<4>::ones([2, 3, 16, 16], &device) * 0.5;
    for kind in [GeneratorKind::EncoderDecoder, GeneratorKind::Unet] {
        let g = Generator::with_coordinates(kind, 4, Some(1.0), &device);
        assert!(g.coordinates);
        assert_eq!(g.convs[0].conv.weight.val().dims()[1], 5, "{kind}: three colour channels and two coordinates in");
        let y = g.forward(x.clone());
        assert_eq!(y.dims(), [2, 3, 16, 16]);
        let y = y.into_data().try_to_vec::<f32>().unwrap();
        assert!(y.iter().all(|p| (p - 0.5).abs() < 1e-6), "{kind}: a residual generator starts as the identity");
    }
}

#[test]
fn per_task_defaults_fill_only_what_the_user_left_open() {
    let open = DrmGuardConfig::default();
    let gaze = open.resolved(Task::Gaze).unwrap();
    assert_eq!((gaze.lr, gaze.coordinates, gaze.max_spread_ratio), (3e-3, false, 0.2));
    let headpose = open.resolved(Task::HeadPose).unwrap();
    assert_eq!((headpose.lr, headpose.coordinates, headpose.max_spread_ratio), (1e-3, true, 0.1));
    assert_eq!((headpose.lambda1, headpose.lambda2), (100.0, 100.0));
    // Reports write the settings with the per-task values filled in.
    assert_eq!((headpose.config.lr, headpose.config.lambda1, headpose.config.generator_coordinates), (Some(1e-3), Some(100.0), Some(true)));
    // The verdict reads the error ratio against κ unless told otherwise.
    assert_eq!((open.collapse, gaze.collapse_threshold(), headpose.collapse_threshold()), (Collapse::Error, 0.45, 0.45));
    let spread = DrmGuardConfig { collapse: Collapse::Spread, ..open.clone() }.resolved(Task::Gaze).unwrap();
    assert_eq!(spread.collapse_threshold(), 0.2);
    let chosen = DrmGuardConfig { lr: Some(5e-4), generator_coordinates: Some(false), max_spread_ratio: Some(0.25), ..open.clone() };
    let chosen = chosen.resolved(Task::HeadPose).unwrap();
    assert_eq!((chosen.lr, chosen.coordinates, chosen.max_spread_ratio), (5e-4, false, 0.25));
    assert!(DrmGuardConfig { lr: Some(0.0), ..open.clone() }.resolved(Task::Gaze).is_err());
    // A classifier gets the authors' classification objective: no feature term, no MTR, and the
    // collapse read on the probabilities' spread; reference models measure regression outputs only.
    let classifier = DrmGuardConfig { references: 2, ..open }.resolved(Task::FASHION).unwrap();
    assert_eq!((classifier.feature_reg, classifier.mtr, classifier.collapse, classifier.lambda1, classifier.references), (FeatureReg::Off, Mtr::Off, Collapse::Spread, 100.0, 0));
}

/// A smoke-profile gaze model with a BadNets backdoor, and a defender's clean set.
fn smoke_suspect() -> (Suspect, CleanSet) {
    let mut config = TrainConfig::new(Task::Gaze, Profile::Smoke, 3);
    config.samples = 800;
    config.epochs = 6;
    let spec = BackdoorSpec { attack: AttackKind::Badnets(BadNetsConfig::default()), target: vec![-0.25, 0.35], poison_rate: 0.1, seed: 3 };
    let (model, card) = TrainJob::builtin(config, Some(spec)).unwrap().run(&Device::flex()).unwrap();
    assert!(card.backdoor.is_some());
    let suspect = card.suspect(model);
    let clean = CleanSet::fresh_builtin(&suspect, 64).unwrap();
    (suspect, clean)
}

#[test]
fn reverse_engineering_lowers_its_objective_and_reports_the_true_score() {
    let (suspect, clean) = smoke_suspect();
    let device = Device::flex();
    let config = DrmGuardConfig { steps: 60, batch_size: 16, ..DrmGuardConfig::default() };
    let (detection, reversal) = DrmGuard::new(config).detect_with_reversal(&suspect, &clean, 0, &device).unwrap();
    let s = &reversal.summary;
    // The optimisation made progress on its own objective: the output variance on the training
    // batches fell well below where it started.
    let (first, last) = (s.history.first().unwrap(), s.history.last().unwrap());
    assert!(last.output_variance < 0.5 * first.output_variance, "output variance {} → {}", first.output_variance, last.output_variance);
    assert!(last.loss < first.loss, "loss {} → {}", first.loss, last.loss);
    // The score is the plain mean |G(x) − x| over the whole clean set, recomputed here.
    let indices: Vec<usize> = (0..clean.len()).collect();
    let (x, _) = clean.batch(&indices, &device);
    let g = reversal.generator.clone();
    let direct = (g.forward(x.clone()) - x).abs().mean().into_scalar::<f32>() as f64;
    assert!((direct - detection.score).abs() < 1e-4, "report {} vs direct {direct}", detection.score);
    // The error ratio divides the reversed outputs' spread by the model's own mean absolute
    // error on the clean set, recomputed here from its predictions and the true labels.
    let (x, y) = clean.batch(&indices, &device);
    let outputs = suspect.model.forward(x).into_data().try_to_vec::<f32>().unwrap();
    let labels = y.into_data().try_to_vec::<f32>().unwrap();
    for (j, &reported) in s.clean_error_deg.iter().enumerate() {
        let mae = outputs.iter().zip(&labels).skip(j).step_by(2).map(|(o, l)| (o - l).abs() as f64).sum::<f64>() / clean.len() as f64;
        assert!((mae.to_degrees() - reported).abs() < 1e-3, "output {j}: clean error {reported}° reported, {}° recomputed", mae.to_degrees());
    }
    let expected = s.output_std_deg.iter().zip(&s.clean_error_deg).map(|(a, b)| a / b).sum::<f64>() / 2.0;
    assert!((s.error_ratio - expected).abs() < 1e-9, "error ratio {} vs {expected}", s.error_ratio);
    // Flagged iff G moved little and the outputs collapsed (by default: the error ratio below κ).
    assert!((0.0..=1.5).contains(&s.spread_ratio), "spread ratio {}", s.spread_ratio);
    assert_eq!(reversal.config.collapse_threshold(), reversal.config.max_error_ratio);
    assert_eq!(detection.backdoored, detection.score < detection.threshold && s.error_ratio < reversal.config.collapse_threshold());
    assert_eq!(detection.threshold, 0.03);
    let map = reversal.attention.as_ref().expect("MTR is on by default");
    assert_eq!(map.len(), 32 * 32);
    assert!(map.iter().all(|v| (0.0..=1.0 + 1e-5).contains(v)), "the attention map is scaled into [0, 1]");
}

#[test]
fn the_same_seed_gives_the_same_reversal() {
    let (suspect, clean) = smoke_suspect();
    let config = DrmGuardConfig { steps: 5, batch_size: 16, ..DrmGuardConfig::default() };
    let device = Device::flex();
    let a = DrmGuard::new(config.clone()).reverse(&suspect, &clean, 0, &device).unwrap();
    let b = DrmGuard::new(config).reverse(&suspect, &clean, 0, &device).unwrap();
    assert_eq!(a.summary.score, b.summary.score);
    assert_eq!(a.summary.estimated_target, b.summary.estimated_target);
}

#[test]
fn extra_steps_run_only_while_the_outputs_stay_collapsed() {
    let (suspect, clean) = smoke_suspect();
    let device = Device::flex();
    let base = DrmGuardConfig { steps: 6, extra_steps: 6, batch_size: 16, ..DrmGuardConfig::default() };
    let run = |c: DrmGuardConfig| DrmGuard::new(c).reverse(&suspect, &clean, 0, &device).unwrap().summary;
    // Never collapsed (κ tiny): exactly `steps`.
    let never = run(DrmGuardConfig { max_error_ratio: Some(1e-9), epsilon: 1e-9, ..base.clone() });
    assert_eq!(never.steps, 6);
    // Always collapsed and I(f) always above ε: at least one round of steps / 2 more, at most
    // `extra_steps` more.
    let always = DrmGuardConfig { max_error_ratio: Some(1e9), epsilon: 1e-9, ..base.clone() };
    let extended = run(always.clone());
    assert!((9..=12).contains(&extended.steps), "{} steps", extended.steps);
    // The extension continues the same optimisation: a plain run of as many steps ends where it did.
    let plain = run(DrmGuardConfig { steps: extended.steps, extra_steps: 0, ..always.clone() });
    assert_eq!((plain.steps, plain.score, &plain.estimated_target), (extended.steps, extended.score, &extended.estimated_target));
    // No extra steps allowed: exactly `steps`.
    assert_eq!(run(DrmGuardConfig { extra_steps: 0, ..always }).steps, 6);
}

#[test]
fn several_starts_keep_the_one_closest_to_a_verdict() {
    let (suspect, clean) = smoke_suspect();
    let config = DrmGuardConfig { steps: 5, batch_size: 16, ..DrmGuardConfig::default() };
    let device = Device::flex();
    let single: Vec<_> = (0..3u64).map(|seed| DrmGuard::new(config.clone()).reverse(&suspect, &clean, 10 + seed, &device).unwrap()).collect();
    let multi = DrmGuard::new(DrmGuardConfig { restarts: 3, ..config }).reverse(&suspect, &clean, 10, &device).unwrap();
    let starts = &multi.summary.restarts;
    assert_eq!(starts.len(), 3);
    let resolved = multi.config.clone();
    let closeness = |score: f64, ratio: f64| (score / resolved.epsilon).max(ratio / resolved.collapse_threshold());
    for (start, one) in starts.iter().zip(&single) {
        // Start k is exactly the single start from seed + k.
        assert_eq!((start.seed, start.score, start.spread_ratio, start.error_ratio), (one.seed, one.summary.score, one.summary.spread_ratio, one.summary.error_ratio));
        assert_eq!(start.closeness, closeness(one.summary.score, one.summary.error_ratio));
    }
    let best = starts.iter().map(|s| s.closeness).fold(f64::INFINITY, f64::min);
    assert_eq!(closeness(multi.summary.score, multi.summary.error_ratio), best);
    let kept = single.iter().find(|r| r.seed == multi.seed).unwrap();
    assert_eq!(kept.summary.estimated_target, multi.summary.estimated_target);
    assert!(DrmGuardConfig { restarts: 0, ..DrmGuardConfig::default() }.resolved(Task::Gaze).is_err());
}

#[test]
fn bad_defense_settings_and_small_clean_sets_are_refused() {
    let (suspect, _) = smoke_suspect();
    let device = Device::flex();
    let few = CleanSet::fresh_builtin(&suspect, 20).unwrap();
    let err = DrmGuard::new(DrmGuardConfig::default()).detect_with_reversal(&suspect, &few, 0, &device).unwrap_err().to_string();
    assert!(err.contains("fewer than one batch of 32"), "{err}");
    for bad in [
        DrmGuardConfig { steps: 0, ..DrmGuardConfig::default() },
        DrmGuardConfig { batch_size: 1, ..DrmGuardConfig::default() },
        DrmGuardConfig { epsilon: f64::NAN, ..DrmGuardConfig::default() },
        DrmGuardConfig { mtr_beta: 1.0, ..DrmGuardConfig::default() },
        DrmGuardConfig { lambda1: Some(-1.0), ..DrmGuardConfig::default() },
        DrmGuardConfig { residual_scale: f32::NAN, ..DrmGuardConfig::default() },
        DrmGuardConfig { residual_scale: 0.0, ..DrmGuardConfig::default() },
        DrmGuardConfig { max_spread_ratio: Some(0.0), ..DrmGuardConfig::default() },
        DrmGuardConfig { max_error_ratio: Some(f64::INFINITY), ..DrmGuardConfig::default() },
    ] {
        assert!(bad.resolved(Task::Gaze).is_err(), "{bad:?} should be refused");
    }
}

/// The tiny benchmark's first head-pose models, trained and scanned exactly as `drmguard bench
/// --profile tiny` does (benign seed 0, BadNets seed 1000, DRMGuard's small-profile settings).
/// The reversal finds this BadNets model's trigger (the estimated target lies within a few degrees
/// of the attacker's, docs/drmguard.md), so it must stay flagged, and rank as more suspicious than
/// its benign twin. A regression test of the detector on a model where it works, not a claim that
/// it finds every trigger, nor about the benign twin's verdict: that model's reversal ends near the
/// single test's threshold (error ratio 0.35, flagged, with the current kernels; cleared with
/// flex's own), so its verdict turns on the last bits of its training.
#[test]
fn the_benchmarks_first_headpose_badnets_model_is_flagged_and_outranks_its_benign_twin() {
    use drmguard::bench::BenchProfile;
    let device = Device::flex();
    let profile = BenchProfile::Tiny;
    let mut suspicion = Vec::new();
    for (attack, seed) in [(None, 0), (Some("badnets"), 1000)] {
        let task = Task::HeadPose;
        let backdoor = attack.map(|name| {
            let (attack, poison_rate) = profile.attack(name, task).unwrap();
            BackdoorSpec { attack, target: BackdoorSpec::default_target(task, seed), poison_rate, seed }
        });
        let (model, card) = TrainJob::builtin(profile.train_config(task, seed), backdoor).unwrap().run(&device).unwrap();
        let suspect = card.suspect(model);
        let clean = CleanSet::fresh_builtin(&suspect, CleanSet::default_size(&suspect)).unwrap();
        let config = profile.detector_configs().drmguard;
        let (detection, reversal) = DrmGuard::new(config).detect_with_reversal(&suspect, &clean, 0, &device).unwrap();
        let s = &reversal.summary;
        eprintln!(
            "{attack:?}: I(f) {:.4}, error ratio {:.3}, spread ratio {:.3}, suspicion {:.3}, flagged {}, target {:?}",
            s.score, s.error_ratio, s.spread_ratio, detection.suspicion, detection.backdoored, s.estimated_target
        );
        suspicion.push(detection.suspicion);
        if let Some(spec) = &card.backdoor {
            assert!(detection.backdoored, "{attack:?}: I(f) {:.4}, error ratio {:.3}", s.score, s.error_ratio);
            let off: f32 = s.estimated_target.iter().zip(&spec.target).map(|(a, b)| (a - b).abs().to_degrees()).fold(0.0, f32::max);
            assert!(off < 5.0, "the estimated target is {off:.1}° from the attacker's");
        }
    }
    assert!(suspicion[1] > suspicion[0], "the BadNets model ({:.3}) must outrank its benign twin ({:.3})", suspicion[1], suspicion[0]);
}
