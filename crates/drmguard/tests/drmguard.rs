//! DRMGuard on tiny models: the generator's shapes and range, and detection on smoke-profile
//! models (a BadNets model is flagged, a benign one is not).

use burn::tensor::{Device, Tensor};
use drmguard::attacks::badnets::BadNetsConfig;
use drmguard::attacks::{AttackKind, BackdoorSpec};
use drmguard::defenses::generator::{Generator, GeneratorKind};
use drmguard::defenses::{CleanSet, DrmGuard, DrmGuardConfig, Suspect};
use drmguard::task::Task;
use drmguard::train::{Profile, TrainConfig, TrainJob};

#[test]
fn generators_keep_the_shape_and_stay_in_the_unit_range() {
    let device = Device::flex();
    let x = Tensor::<4>::ones([2, 3, 16, 16], &device) * 0.5;
    for kind in [GeneratorKind::EncoderDecoder, GeneratorKind::Unet] {
        for residual in [None, Some(0.0)] {
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

/// A smoke-profile gaze model, benign or with a BadNets backdoor.
fn smoke_suspect(backdoor: bool) -> (Suspect, CleanSet) {
    let mut config = TrainConfig::new(Task::Gaze, Profile::Smoke, 3);
    config.samples = 1200;
    config.epochs = 8;
    let spec = backdoor.then(|| BackdoorSpec {
        attack: AttackKind::Badnets(BadNetsConfig::default()),
        target: vec![-0.25, 0.35],
        poison_rate: 0.1,
        seed: 3,
    });
    let (model, card) = TrainJob::builtin(config, spec).run(&Device::flex()).unwrap();
    let suspect = Suspect::new(model, &card);
    let clean = CleanSet::fresh_builtin(&suspect, 200).unwrap();
    (suspect, clean)
}

#[test]
fn a_badnets_smoke_model_is_flagged_and_a_benign_one_is_not() {
    let config = DrmGuardConfig { steps: 300, ..DrmGuardConfig::default() };
    let device = Device::flex();
    let mut scores = Vec::new();
    for backdoor in [false, true] {
        let (suspect, clean) = smoke_suspect(backdoor);
        let (detection, _) = DrmGuard::new(config.clone()).detect(&suspect, &clean, &device).unwrap();
        scores.push(detection.score);
        assert_eq!(detection.backdoored, backdoor, "backdoor {backdoor}: I(f) = {:.4}, ε = {}", detection.score, detection.threshold);
    }
    assert!(scores[1] < scores[0], "{scores:?}");
}
