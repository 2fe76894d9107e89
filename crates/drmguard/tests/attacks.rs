//! Trigger invariants of each attack, the poisoning plan, and a tiny end-to-end backdoor.

use burn::tensor::{Device, Tensor};
use drmguard::attacks::adaptive::{AdaptiveConfig, rav_penalty};
use drmguard::attacks::badnets::BadNetsConfig;
use drmguard::attacks::blended::BlendedConfig;
use drmguard::attacks::clean_label::{CleanLabelConfig, PgdAim};
use drmguard::attacks::issba::IssbaConfig;
use drmguard::attacks::wanet::WanetConfig;
use drmguard::attacks::{Attack, AttackKind, BackdoorSpec, backdoor_errors, poison_dataset};
use drmguard::data::{Dataset, Split, synthesize};
use drmguard::metrics::task_error;
use drmguard::models::inference::predict;
use drmguard::task::Task;
use drmguard::train::{Poisoner, Profile, TrainConfig, train};

/// Random images from our own generator (the backend's is process-wide, shared by parallel tests).
fn images(n: usize, s: usize) -> Tensor<4> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((n * 1000 + s) as u64);
    let values: Vec<f32> = (0..n * 3 * s * s).map(|_| rng.random()).collect();
    Tensor::from_data(burn::tensor::TensorData::new(values, [n, 3, s, s]), &Device::flex())
}

/// A gaze dataset of `n` grey `s`×`s` images with labels spread over the label range.
fn blank(n: usize, s: u32) -> Dataset {
    Dataset {
        output_names: Task::Gaze.output_names(),
        image_size: s,
        names: (0..n).map(|i| format!("{i}.png")).collect(),
        images: vec![image::RgbImage::from_pixel(s, s, image::Rgb([128, 128, 128])); n],
        labels: (0..n).flat_map(|i| [(i % 7) as f32 * 0.1 - 0.3, (i % 11) as f32 * 0.1 - 0.5]).collect(),
    }
}

/// WaNet as its authors configured it, with two noise samples per poisoned one.
fn original_wanet() -> WanetConfig {
    WanetConfig { cross_ratio: 2.0, ..WanetConfig::default() }
}

/// The largest change of one 8-bit value between two images.
fn largest_change(a: &image::RgbImage, b: &image::RgbImage) -> i32 {
    a.as_raw().iter().zip(b.as_raw()).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap_or(0)
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
    let attack = original_wanet().build(s as u32, 1).unwrap();
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
    let data = blank(1000, 8);
    let plan = spec(AttackKind::Wanet(original_wanet()), vec![0.1, 0.2], 0.1).plan(Task::Gaze, 8, &data).unwrap();
    assert_eq!(plan.poisoned.len(), 100);
    assert_eq!(plan.cross.len(), 200);
    assert!(plan.poisoned.is_disjoint(&plan.cross));
    let again = spec(AttackKind::Wanet(original_wanet()), vec![0.1, 0.2], 0.1).plan(Task::Gaze, 8, &data).unwrap();
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
    for task in [Task::Gaze, Task::HeadPose] {
        for seed in 0..20 {
            let t = BackdoorSpec::default_target(task, seed);
            for (v, half) in t.iter().zip(task.label_half_range()) {
                assert!(v.abs() >= 0.3 * half - 1e-6 && v.abs() <= 0.7 * half + 1e-6, "{task}: {v} vs ±{half}");
            }
        }
    }
}

#[test]
fn default_landmark_targets_are_faces_turned_away() {
    let data = drmguard::data::synthesize(Task::Landmarks, 200, 16, 1).unwrap();
    let mean = drmguard::metrics::column_means(&data.labels, 10);
    for seed in 0..20 {
        let t = BackdoorSpec::default_target(Task::Landmarks, seed);
        assert_eq!(t.len(), 10);
        assert!(t.iter().all(|v| (0.0..=1.0).contains(v)), "seed {seed}: {t:?}");
        assert!(t[0] < t[2] && t[6] < t[8] && t[1] < t[7], "seed {seed}: not a face's layout: {t:?}");
        // Turned by at least 30% of each angle's half-range: away from the mean face.
        let away = drmguard::metrics::mean_point_distance(&t, &mean);
        assert!(away > 0.03, "seed {seed}: only {away} from the mean face: {t:?}");
    }
    assert_ne!(BackdoorSpec::default_target(Task::Landmarks, 1), BackdoorSpec::default_target(Task::Landmarks, 2));
}

#[test]
fn a_smoke_model_trained_on_badnets_data_follows_the_trigger() {
    let mut config = TrainConfig::new(Task::Gaze, Profile::Smoke, 1);
    config.samples = 800;
    config.epochs = 8;
    let data = synthesize(Task::Gaze, config.samples, config.image_size, config.seed).unwrap();
    let (train_set, val_set, test_set) = (data.split(Split::Train), data.split(Split::Val), data.split(Split::Test));
    let spec = spec(AttackKind::Badnets(BadNetsConfig::default()), vec![-0.3, 0.45], 0.2);
    let plan = spec.plan(Task::Gaze, config.image_size, &train_set).unwrap();
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
    let backdoor =
        spec(AttackKind::Wanet(original_wanet()), vec![0.25, -0.5], 0.1).plan(Task::Gaze, 16, &data).unwrap();
    let indices: Vec<usize> = (0..20).collect();
    let batch = backdoor.training_batch(&data, &indices, &mut rand::rng(), &Device::flex());
    assert_eq!(batch.images.dims(), [20, 3, 16, 16]);
    assert_eq!((batch.clean, batch.poisoned), (14, 2));
    let labels = batch.labels.into_data().try_to_vec::<f32>().unwrap();
    let at_target = labels.chunks(2).filter(|l| l == &[0.25, -0.5]).count();
    assert_eq!(at_target, 2, "10% of the batch carries the target");
    // The other 18 rows keep true labels (4 of them are noise-warped cross samples).
    let true_labels: Vec<&[f32]> = (0..20).map(|i| data.label(i)).collect();
    let kept = labels.chunks(2).filter(|l| true_labels.contains(l)).count();
    assert_eq!(kept, 18);
}

fn clean_label(radius_deg: f32) -> AttackKind {
    AttackKind::CleanLabel(CleanLabelConfig { radius_deg, ..Default::default() })
}

#[test]
fn clean_label_poisons_only_samples_near_the_target_and_keeps_their_labels() {
    let data = synthesize(Task::Gaze, 200, 16, 3).unwrap();
    let target = data.label(0).to_vec();
    let backdoor = spec(clean_label(8.0), target.clone(), 0.1).plan(Task::Gaze, 16, &data).unwrap();
    assert!(!backdoor.poisoned.is_empty() && backdoor.poisoned.len() <= 20);
    for &i in &backdoor.poisoned {
        let distance = task_error(Task::Gaze, data.label(i), &target).mean_deg;
        assert!(distance <= 8.0, "sample {i} is {distance:.1}° from the target");
    }
    // In training batches and in poisoned copies, every label stays the true one.
    let indices: Vec<usize> = (0..data.len()).collect();
    let batch = backdoor.training_batch(&data, &indices, &mut rand::rng(), &Device::flex());
    assert_eq!(batch.poisoned, backdoor.poisoned.len());
    let mut order: Vec<usize> = indices.iter().copied().filter(|i| !backdoor.poisoned.contains(i)).collect();
    order.extend(indices.iter().copied().filter(|i| backdoor.poisoned.contains(i)));
    let expected: Vec<f32> = order.iter().flat_map(|&i| data.label(i).to_vec()).collect();
    assert_eq!(batch.labels.into_data().try_to_vec::<f32>().unwrap(), expected);
    let copy = poison_dataset(&data, &backdoor, false, &Device::flex()).unwrap();
    assert_eq!(copy.labels, data.labels);
    let changed = (0..data.len()).filter(|&i| copy.images[i] != data.images[i]).count();
    assert_eq!(changed, backdoor.poisoned.len());
}

#[test]
fn clean_label_refuses_a_target_no_label_is_near() {
    let data = blank(50, 8);
    let err = spec(clean_label(1.0), vec![0.35, 0.55], 0.1).plan(Task::Gaze, 8, &data).unwrap_err().to_string();
    assert!(err.contains("no training label lies within 1°"), "{err}");
}

#[test]
fn clean_label_trigger_sits_in_the_four_corners_only() {
    let attack = clean_label(10.0).build(Task::Gaze, 32, 0).unwrap();
    let x = images(2, 32);
    let (before, after) = (values(x.clone()), values(attack.apply(x)));
    let (_, _, side) = BadNetsConfig::default().patch_rect(32).unwrap();
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        let (y, x) = ((i / 32) % 32, i % 32);
        let near = |v: usize| v < 32 / 4 || v >= 32 - 32 / 4;
        if a != b {
            assert!(near(y) && near(x), "pixel ({y}, {x}) changed outside the corners");
        }
    }
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(changed > 4 * side * side, "all four patches are stamped ({changed} values changed)");
}

/// An untrained smoke-profile gaze model (its gradients suffice for PGD) and `n` built-in samples.
fn untrained_gaze_surrogate(n: usize) -> (Device, drmguard::models::Model, Dataset) {
    let config = TrainConfig::new(Task::Gaze, Profile::Smoke, 2);
    let device = Device::flex();
    let surrogate = config.model_spec().init(&device, 2).unwrap();
    let data = synthesize(Task::Gaze, n, config.image_size, 2).unwrap();
    (device, surrogate, data)
}

#[test]
fn clean_label_pgd_stays_within_epsilon_and_raises_the_surrogate_error() {
    let (device, surrogate, data) = untrained_gaze_surrogate(40);
    let picked: Vec<usize> = (0..20).collect();
    let cl = CleanLabelConfig::default();
    let hard = cl.harden(&surrogate, &data, &picked, None, &device).unwrap();
    assert_eq!(hard.labels, data.labels);
    let limit = (cl.pgd_epsilon * 255.0).round() as i32 + 1;
    for i in 0..data.len() {
        let diff = largest_change(&data.images[i], &hard.images[i]);
        if i < 20 {
            assert!(diff <= limit, "sample {i} moved by {diff}/255 > ε");
        } else {
            assert_eq!(diff, 0, "sample {i} was not picked");
        }
    }
    let error = |d: &Dataset| {
        let subset = d.subset(&picked);
        task_error(Task::Gaze, &predict(&surrogate, &subset, 64).unwrap(), &subset.labels).mean_deg
    };
    let (before, after) = (error(&data), error(&hard));
    assert!(after > before + 1.0, "the surrogate's error only went from {before:.2}° to {after:.2}°");
}

#[test]
fn clean_label_donor_aim_pulls_the_surrogate_towards_far_labels() {
    let (device, surrogate, data) = untrained_gaze_surrogate(60);
    let cl = CleanLabelConfig { aim: PgdAim::Donor, radius_deg: 15.0, ..Default::default() };
    let target = data.label(0).to_vec();
    let picked = cl.eligible(Task::Gaze, &data, &target);
    let donors = cl.donors(Task::Gaze, &data, &target, &picked, 7).unwrap().unwrap();
    assert_eq!(donors.len(), picked.len());
    assert_eq!(Some(donors.clone()), cl.donors(Task::Gaze, &data, &target, &picked, 7).unwrap(), "seeded");
    for &d in &donors {
        assert!(task_error(Task::Gaze, data.label(d), &target).mean_deg > 15.0, "donor {d} lies within the radius");
    }
    let away = CleanLabelConfig { radius_deg: 15.0, ..Default::default() };
    assert_eq!(away.donors(Task::Gaze, &data, &target, &picked, 7).unwrap(), None, "away needs no donors");
    assert!(cl.harden(&surrogate, &data, &picked, Some(&donors[1..]), &device).is_err(), "one donor per sample");

    let hard = cl.harden(&surrogate, &data, &picked, Some(&donors), &device).unwrap();
    assert_eq!(hard.labels, data.labels, "labels stay true");
    let goals: Vec<f32> = donors.iter().flat_map(|&d| data.label(d).to_vec()).collect();
    let error = |d: &Dataset| task_error(Task::Gaze, &predict(&surrogate, &d.subset(&picked), 64).unwrap(), &goals).mean_deg;
    let (before, after) = (error(&data), error(&hard));
    assert!(after < before - 1.0, "the error to the donors' labels only went from {before:.2}° to {after:.2}°");
    let limit = (cl.pgd_epsilon * 255.0).round() as i32 + 1;
    for &i in &picked {
        let diff = largest_change(&data.images[i], &hard.images[i]);
        assert!(diff <= limit, "sample {i} moved by {diff}/255 > ε");
    }
    let everything = CleanLabelConfig { radius_deg: 180.0, ..cl };
    assert!(everything.donors(Task::Gaze, &data, &target, &picked, 7).is_err(), "no label outside the radius");
}

#[test]
fn a_robust_surrogate_is_harder_to_move_than_the_plain_one() {
    let config = TrainConfig::new(Task::Gaze, Profile::Smoke, 4);
    let device = Device::flex();
    let data = synthesize(Task::Gaze, 256, config.image_size, 4).unwrap();
    let val = synthesize(Task::Gaze, 64, config.image_size, 5).unwrap();
    let (benign, _) = train(&config, &data, &val, None, &device).unwrap();
    let plain = CleanLabelConfig { robust_epochs: 0, ..Default::default() };
    let same = plain.surrogate(&benign, Task::Gaze, &data, 0, &device).unwrap();
    let outputs = |m: &drmguard::models::Model| predict(m, &val, 64).unwrap();
    assert_eq!(outputs(&same), outputs(&benign), "0 robust epochs keeps the benign model");
    let robust_config = CleanLabelConfig { robust_epochs: 3, ..Default::default() };
    let robust = robust_config.surrogate(&benign, Task::Gaze, &data, 0, &device).unwrap();
    assert_eq!(outputs(&robust), outputs(&robust_config.surrogate(&benign, Task::Gaze, &data, 0, &device).unwrap()), "seeded");
    // The PGD perturbation moves each model's outputs; the adversarially fine-tuned one less.
    let picked: Vec<usize> = (0..val.len()).collect();
    let shift = |m: &drmguard::models::Model| {
        let hard = plain.harden(m, &val, &picked, None, &device).unwrap();
        let (a, b) = (predict(m, &val, 64).unwrap(), predict(m, &hard, 64).unwrap());
        task_error(Task::Gaze, &a, &b).mean_deg
    };
    let (plain_shift, robust_shift) = (shift(&benign), shift(&robust));
    assert!(
        robust_shift < 0.8 * plain_shift,
        "PGD moved the robust surrogate by {robust_shift:.2}°, the plain one by {plain_shift:.2}°"
    );
}

#[test]
fn clean_label_settings_added_later_keep_the_old_cache_keys() {
    // Model caches are keyed by the serialised attack config: with a plain surrogate (all there
    // was before) the robust surrogate's fields must not appear, so models trained before them
    // are still found, and a config without them reads back as a plain surrogate.
    let plain = CleanLabelConfig { robust_epochs: 0, ..Default::default() };
    let json = serde_json::to_value(&plain).unwrap();
    assert_eq!(json.as_object().unwrap().len(), 4, "{json}");
    assert_eq!(serde_json::from_value::<CleanLabelConfig>(json).unwrap(), plain);
    assert_eq!(CleanLabelConfig::default().robust_epochs, 3, "the default surrogate is robust");
    let donor = serde_json::to_value(CleanLabelConfig { aim: PgdAim::Donor, ..plain.clone() }).unwrap();
    assert_eq!(donor["aim"], "donor", "{donor}");
    let robust = CleanLabelConfig { robust_epochs: 3, robust_epsilon: Some(0.1), ..Default::default() };
    let json = serde_json::to_value(&robust).unwrap();
    assert_eq!((json["robust_epochs"].as_u64(), json["robust_epsilon"].as_f64().map(|e| (e * 10.0).round())), (Some(3), Some(1.0)));
    assert_eq!(robust.robust_epsilon(), 0.1);
    assert_eq!(plain.robust_epsilon(), plain.pgd_epsilon / 2.0, "half the PGD bound unless set");
    for bad in [Some(0.0), Some(-0.1), Some(1.5), Some(f32::NAN)] {
        assert!(CleanLabelConfig { robust_epsilon: bad, ..Default::default() }.validate().is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn adaptive_penalty_vanishes_for_clean_like_angles_and_punishes_collapsed_ones() {
    let device = Device::flex();
    let z = |values: Vec<f32>, n: usize| Tensor::<2>::from_data(burn::tensor::TensorData::new(values, [n, 3]), &device);
    let weight = z(vec![1.0, 0.0, 0.5, 0.0, 1.0, -0.5], 2);
    let clean = z(vec![1.0, 0.2, 0.3, 0.1, 1.0, 0.4, 0.5, 0.5, 0.9, 0.8, 0.1, 0.2], 4);
    let same = rav_penalty(clean.clone(), clean.clone(), weight.clone()).into_scalar::<f32>();
    assert!(same.abs() < 1e-4, "RAV = 1 gives {same}");
    let collapsed = z(vec![0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4], 3);
    let penalty = rav_penalty(clean, collapsed, weight).into_scalar::<f32>();
    assert!((penalty - 1.0).abs() < 1e-3, "RAV = 0 gives {penalty}");
}

#[test]
fn the_adaptive_attack_uses_wanets_trigger_and_trains() {
    let x = images(2, 16);
    let wanet = AttackKind::Wanet(original_wanet()).build(Task::Gaze, 16, 4).unwrap();
    let adaptive = AttackKind::by_name("adaptive").unwrap().build(Task::Gaze, 16, 4).unwrap();
    assert_eq!(values(wanet.apply(x.clone())), values(adaptive.apply(x)));
    assert!(adaptive.poisons_every_batch() && adaptive.relabels());

    let mut config = TrainConfig::new(Task::Gaze, Profile::Smoke, 3);
    config.samples = 160;
    config.epochs = 1;
    let data = synthesize(Task::Gaze, config.samples, config.image_size, config.seed).unwrap();
    let adaptive = AttackKind::Adaptive(AdaptiveConfig { lambda: 1.0, ..Default::default() });
    let train_set = data.split(Split::Train);
    let plan = spec(adaptive, vec![0.2, -0.3], 0.25).plan(Task::Gaze, config.image_size, &train_set).unwrap();
    let (_, history) = train(&config, &train_set, &data.split(Split::Val), Some(&plan), &Device::flex()).unwrap();
    assert!(history[0].train_loss.is_finite());
}

#[test]
fn attacks_are_found_by_name() {
    for name in AttackKind::NAMES {
        assert_eq!(AttackKind::by_name(name).unwrap().name(), *name);
    }
    let err = AttackKind::by_name("trojan").unwrap_err().to_string();
    assert!(err.contains("unknown attack 'trojan'") && err.contains("clean-label"), "{err}");
}

fn tiny_issba() -> IssbaConfig {
    IssbaConfig { steps: 3, images: 32, ..Default::default() }
}

#[test]
fn issba_residuals_are_invisible_sample_specific_and_cached() {
    let cache = tempfile::tempdir().unwrap();
    let config = tiny_issba();
    let attack = config.build_in(cache.path(), Task::Gaze, 16, 7).unwrap();
    let x = images(4, 16);
    let poisoned = attack.apply(x.clone());
    let (before, after) = (values(x), values(poisoned));
    let per_image = 3 * 16 * 16;
    let mut residuals = Vec::new();
    for i in 0..4 {
        let r: Vec<f32> = (i * per_image..(i + 1) * per_image).map(|j| after[j] - before[j]).collect();
        let mse = r.iter().map(|v| v * v).sum::<f32>() / per_image as f32;
        let psnr = 10.0 * (1.0 / mse.max(1e-12)).log10();
        assert!(psnr >= 27.0, "image {i}: PSNR {psnr:.1} dB");
        assert!(r.iter().all(|v| v.abs() <= config.amplitude + 1e-6));
        assert!(r.iter().any(|v| v.abs() > 1e-5), "image {i} is unchanged");
        residuals.push(r);
    }
    assert_ne!(residuals[0], residuals[1], "each image gets its own residual");
    let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(cached.len(), 1, "the encoder is cached");
    let again = config.build_in(cache.path(), Task::Gaze, 16, 7).unwrap();
    assert_eq!(values(again.apply(images(4, 16))), after, "the cached encoder gives the same trigger");
    let fresh = tempfile::tempdir().unwrap();
    let retrained = config.build_in(fresh.path(), Task::Gaze, 16, 7).unwrap();
    assert_eq!(values(retrained.apply(images(4, 16))), after, "training is deterministic");
}

#[test]
fn bad_issba_settings_are_refused() {
    for bad in [
        IssbaConfig { bits: 0, ..tiny_issba() },
        IssbaConfig { amplitude: 0.0, ..tiny_issba() },
        IssbaConfig { steps: 0, ..tiny_issba() },
        IssbaConfig { images: 4, ..tiny_issba() },
    ] {
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("ISSBA"), "{err}");
    }
}

#[test]
fn input_aware_triggers_are_masked_sample_specific_crossable_and_cached() {
    use drmguard::attacks::input_aware::InputAwareConfig;
    use rand::SeedableRng;
    let cache = tempfile::tempdir().unwrap();
    let config = InputAwareConfig { width: 4, mask_epochs: 2, epochs: 1, images: 64, ..Default::default() };
    let attack = config.build_in(cache.path(), Task::Gaze, 16, 5).unwrap();
    let x = images(4, 16);
    let (patterns, masks) = attack.pattern_and_mask(x.clone());
    let (p, m) = (values(patterns), masks.into_data().try_to_vec::<f32>().unwrap());
    assert!(m.iter().all(|v| (0.0..=1.0).contains(v)) && p.iter().all(|v| (0.0..=1.0).contains(v)));
    // x' = x + (G(x) − x)·m(x), pixel by pixel: unmasked pixels keep their value.
    let (before, after) = (values(x.clone()), values(attack.apply(x.clone())));
    let plane = 16 * 16;
    for (j, (a, b)) in before.iter().zip(&after).enumerate() {
        let (image, pixel) = (j / (3 * plane), j % plane);
        let mask = m[image * plane + pixel];
        assert!((b - (a + (p[j] - a) * mask)).abs() < 1e-5, "pixel {j}");
    }
    // Each image gets its own pattern.
    let first: Vec<f32> = p[..3 * plane].to_vec();
    assert_ne!(first, p[3 * plane..6 * plane].to_vec(), "patterns depend on the image");
    // Cross samples carry another image's trigger, so they differ from the image's own.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let crossed = values(attack.cross(x.clone(), &mut rng).unwrap());
    assert_ne!(crossed, after, "a cross sample does not carry its own trigger");
    // Cached, and deterministic when retrained.
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1, "the networks are cached");
    let again = config.build_in(cache.path(), Task::Gaze, 16, 5).unwrap();
    assert_eq!(values(again.apply(x.clone())), after, "the cached networks give the same trigger");
    let fresh = tempfile::tempdir().unwrap();
    let retrained = config.build_in(fresh.path(), Task::Gaze, 16, 5).unwrap();
    assert_eq!(values(retrained.apply(x)), after, "training is deterministic");
    // Bad settings are refused before any training.
    for bad in [
        InputAwareConfig { mask_density: 0.0, ..Default::default() },
        InputAwareConfig { images: 8, ..Default::default() },
        InputAwareConfig { lr: f64::NAN, ..Default::default() },
        InputAwareConfig { lambda_div: -1.0, ..Default::default() },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}
