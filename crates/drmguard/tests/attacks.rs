//! Trigger invariants of each attack, the poisoning plan, and a tiny end-to-end backdoor.

use burn::tensor::{Device, Tensor};
use drmguard::attacks::badnets::BadNetsConfig;
use drmguard::attacks::blended::BlendedConfig;
use drmguard::attacks::wanet::WanetConfig;
use drmguard::attacks::{Attack, AttackKind, BackdoorSpec, backdoor_errors};
use drmguard::data::{Split, synthesize};
use drmguard::metrics::task_error;
use drmguard::task::Task;
use drmguard::train::{Profile, TrainConfig, predict, train};

/// Random images from our own generator (the backend's is process-wide, shared by parallel tests).
fn images(n: usize, s: usize) -> Tensor<4> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((n * 1000 + s) as u64);
    let values: Vec<f32> = (0..n * 3 * s * s).map(|_| rng.random()).collect();
    Tensor::from_data(burn::tensor::TensorData::new(values, [n, 3, s, s]), &Device::flex())
}

fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn badnets_touches_only_its_patch() {
    let s = 64;
    let config = BadNetsConfig::default();
    let (top, left, side) = config.patch_rect(s as u32).unwrap();
    assert_eq!(side, 8, "1/8 of the side by default");
    assert!(top + side < s && left + side < s, "inside the image");
    let attack = config.build(s as u32).unwrap();
    let x = images(2, s);
    let before = values(x.clone());
    let after = values(attack.apply(x));
    let mut changed_inside = 0;
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        let (row, col) = ((i / s) % s, i % s);
        let inside = (top..top + side).contains(&row) && (left..left + side).contains(&col);
        if inside {
            assert!(*b == 0.0 || *b == 1.0, "the patch is black and white");
            changed_inside += usize::from(a != b);
        } else {
            assert_eq!(a, b, "pixel ({row}, {col}) outside the patch changed");
        }
    }
    assert!(changed_inside > 0);
}

#[test]
fn blended_mixes_exactly_alpha() {
    let s = 16;
    let attack = BlendedConfig { alpha: 0.2 }.build(s as u32, 3).unwrap();
    let black = attack.apply(Tensor::<4>::zeros([1, 3, s, s], &Device::flex()));
    let pattern: Vec<f32> = values(black).iter().map(|v| v / 0.2).collect();
    assert!(pattern.iter().all(|p| (0.0..=1.0 + 1e-5).contains(p)));
    let x = images(2, s);
    let before = values(x.clone());
    let after = values(attack.apply(x));
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        let expected = 0.8 * a + 0.2 * pattern[i % (3 * s * s)];
        assert!((b - expected).abs() < 1e-5, "{b} vs {expected}");
    }
}

#[test]
fn wanet_with_zero_strength_is_the_identity() {
    let s = 32;
    let attack = WanetConfig { s: 0.0, ..Default::default() }.build(s as u32, 1).unwrap();
    let x = images(2, s);
    let diff = (attack.apply(x.clone()) - x).abs().max().into_scalar::<f32>();
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn wanet_warps_slightly_and_its_noise_mode_differs() {
    let s = 32;
    let attack = WanetConfig::default().build(s as u32, 1).unwrap();
    let x = images(4, s);
    let warped = attack.apply(x.clone());
    let change = (warped.clone() - x.clone()).abs().mean().into_scalar::<f32>();
    assert!(change > 1e-3 && change < 0.2, "a small but real change: {change}");
    let cross = attack.cross(x, &mut rand::rng()).unwrap();
    let apart = (cross - warped).abs().mean().into_scalar::<f32>();
    assert!(apart > 1e-4, "noise samples are not the trigger: {apart}");
    assert_eq!(attack.cross_ratio(), 2.0);
}

fn spec(attack: AttackKind, target: Vec<f32>, rate: f64) -> BackdoorSpec {
    BackdoorSpec { attack, target, poison_rate: rate, seed: 5 }
}

#[test]
fn the_plan_poisons_the_requested_share_and_keeps_cross_samples_apart() {
    let plan = spec(AttackKind::Wanet(WanetConfig::default()), vec![0.1, 0.2], 0.1).plan(Task::Gaze, 32, 1000).unwrap();
    assert_eq!(plan.poisoned.len(), 100);
    assert_eq!(plan.cross.len(), 200);
    assert!(plan.poisoned.is_disjoint(&plan.cross));
    let again = spec(AttackKind::Wanet(WanetConfig::default()), vec![0.1, 0.2], 0.1).plan(Task::Gaze, 32, 1000).unwrap();
    assert_eq!(plan.poisoned, again.poisoned, "deterministic for a seed");
}

#[test]
fn bad_targets_and_rates_are_refused() {
    let badnets = || AttackKind::Badnets(BadNetsConfig::default());
    let err = spec(badnets(), vec![0.1, 0.2], 0.1).validate(Task::HeadPose).unwrap_err().to_string();
    assert!(err.contains("2 values") && err.contains("3 outputs"), "{err}");
    for rate in [0.0, -0.1, 1.5, f64::NAN] {
        let err = spec(badnets(), vec![0.1, 0.2], rate).validate(Task::Gaze).unwrap_err().to_string();
        assert!(err.contains("poison rate"), "{err}");
    }
    assert!(spec(badnets(), vec![0.1, 0.2], 1.0).validate(Task::Gaze).is_ok());
}

#[test]
fn default_targets_lie_inside_the_range_away_from_the_centre() {
    for task in Task::ALL {
        for seed in 0..20 {
            let t = BackdoorSpec::default_target(task, seed);
            for (v, half) in t.iter().zip(task.label_half_range()) {
                assert!(v.abs() >= 0.3 * half - 1e-6 && v.abs() <= 0.7 * half + 1e-6, "{task}: {v} vs ±{half}");
            }
        }
    }
}

#[test]
fn a_smoke_model_trained_on_badnets_data_follows_the_trigger() {
    let mut config = TrainConfig::new(Task::Gaze, Profile::Smoke, 1);
    config.samples = 800;
    config.epochs = 8;
    let data = synthesize(Task::Gaze, config.samples, config.image_size, config.seed).unwrap();
    let (train_set, val_set, test_set) = (data.split(Split::Train), data.split(Split::Val), data.split(Split::Test));
    let spec = spec(AttackKind::Badnets(BadNetsConfig::default()), vec![-0.3, 0.45], 0.2);
    let plan = spec.plan(Task::Gaze, config.image_size, train_set.len()).unwrap();
    let (model, _) = train(&config, &train_set, &val_set, Some(&plan), &Device::flex()).unwrap();
    let errors = backdoor_errors(&model, Task::Gaze, &test_set, &plan, 64).unwrap();
    // Without the trigger, the outputs are far from the target.
    let clean = predict(&model, &test_set, 64).unwrap();
    let targets: Vec<f32> = plan.target.iter().copied().cycle().take(clean.len()).collect();
    let clean_to_target = task_error(Task::Gaze, &clean, &targets).mean_deg;
    assert!(
        errors.attack_error.mean_deg < 0.4 * clean_to_target,
        "AE {:.2}° should be far below the clean outputs' distance to the target {clean_to_target:.2}°",
        errors.attack_error.mean_deg
    );
    assert!(errors.poisoned_true_error.mean_deg > errors.attack_error.mean_deg);
}

#[test]
fn wanet_poisons_a_share_of_every_batch_as_the_original_does() {
    let data = synthesize(Task::Gaze, 20, 16, 0).unwrap();
    let backdoor = spec(AttackKind::Wanet(WanetConfig::default()), vec![0.25, -0.5], 0.1).plan(Task::Gaze, 16, 20).unwrap();
    let indices: Vec<usize> = (0..20).collect();
    let (x, y) = backdoor.training_batch(&data, &indices, &mut rand::rng(), &Device::flex());
    assert_eq!(x.dims(), [20, 3, 16, 16]);
    let labels = y.into_data().try_to_vec::<f32>().unwrap();
    let at_target = labels.chunks(2).filter(|l| l == &[0.25, -0.5]).count();
    assert_eq!(at_target, 2, "10% of the batch carries the target");
    // The other 18 rows keep true labels (4 of them are noise-warped cross samples).
    let true_labels: Vec<&[f32]> = (0..20).map(|i| data.label(i)).collect();
    let kept = labels.chunks(2).filter(|l| true_labels.contains(l)).count();
    assert_eq!(kept, 18);
}
