//! Classification through the regression pipeline: a `class` column read into one-hot labels,
//! cross-entropy training, accuracy as the error's complement, and a target-class backdoor whose
//! attack success rate is measured outside the target class.

use burn::tensor::Device;
use drmguard::attacks::{AttackKind, BackdoorSpec, backdoor_errors};
use drmguard::data::{DataSource, Dataset, Split, folder};
use drmguard::defenses::drmguard::DrmGuardTest;
use drmguard::attacks::wanet::WanetConfig;
use drmguard::defenses::blend::{blend_target, reverse_class_blends};
use drmguard::defenses::class_repair::{Shapes, repair_with_shapes, with_shapes};
use drmguard::defenses::warp::{WarpConfig, reverse_class_warps, warp_target};
use drmguard::defenses::{CleanSet, Detector, DrmGuard, DrmGuardConfig, NeuralCleanse, NeuralCleanseConfig, UnlearnConfig};
use drmguard::metrics::task_error;
use drmguard::models::inference::predict;
use drmguard::pipeline::TrainJob;
use drmguard::task::{CLASS_COLUMN, Task};
use drmguard::train::{Profile, TrainConfig};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TWO: Task = Task::Classification { classes: 2 };

/// `n` noisy 32 × 32 images of two classes: a bright bar across the top (class 0) or down the
/// left side (class 1).
fn bars(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ds = Dataset { output_names: vec![CLASS_COLUMN.into()], image_size: 32, names: vec![], images: vec![], labels: vec![] };
    for i in 0..n {
        let class = i % 2;
        let image = RgbImage::from_fn(32, 32, |x, y| {
            let bar = if class == 0 { y < 8 } else { x < 8 };
            let v = if bar { 200 } else { 40 } + rng.random_range(0..40u8);
            Rgb([v, v, v])
        });
        ds.names.push(format!("{i:04}.png"));
        ds.images.push(image);
        ds.labels.push(class as f32);
    }
    ds
}

fn folder_of(ds: &Dataset) -> (tempfile::TempDir, DataSource) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bars");
    folder::write(ds, &dir).unwrap();
    (tmp, DataSource::Folder { path: dir })
}

#[test]
fn a_class_column_loads_as_one_hot_rows_and_writes_back() {
    let ds = bars(6, 0);
    let (_tmp, source) = folder_of(&ds);
    let loaded = source.load(TWO, 32, Split::All).unwrap();
    assert_eq!(loaded.output_names, ["class_0", "class_1"]);
    assert_eq!(loaded.label(0), [1.0, 0.0]);
    assert_eq!(loaded.label(1), [0.0, 1.0]);
    assert_eq!(loaded.class_column(TWO).labels, ds.labels, "one-hot rows back to the class column");
    let three_columns = source.load(Task::HeadPose, 32, Split::All).unwrap_err().to_string();
    assert!(three_columns.contains("yaw"), "{three_columns}");
}

#[test]
fn a_class_outside_the_task_is_refused_with_the_image_named() {
    let mut ds = bars(4, 1);
    ds.labels[3] = 2.0;
    let err = ds.clone().labelled_for(TWO).unwrap_err().to_string();
    assert!(err.contains("0003.png") && err.contains("class 2"), "{err}");
    ds.labels[3] = 0.5;
    assert!(ds.labelled_for(TWO).is_err(), "a fraction is no class");
}

#[test]
fn cross_entropy_training_learns_the_classes_and_a_badnets_backdoor_takes() {
    let (_tmp, source) = folder_of(&bars(400, 2));
    let config = TrainConfig { epochs: 10, ..TrainConfig::new(TWO, Profile::Smoke, 3) };
    let device = Device::flex();
    let benign = TrainJob { config: config.clone(), source: source.clone(), backdoor: None };
    let (model, card) = benign.run(&device).unwrap();
    let test = source.load(TWO, 32, Split::Test).unwrap();
    let error = task_error(TWO, &predict(&model, &test, 32).unwrap(), &test.labels);
    assert!(error.mean_deg < 10.0, "accuracy {:.1}% on bars", 100.0 - error.mean_deg);
    assert_eq!(card.output_names, ["class_0", "class_1"]);

    let spec = BackdoorSpec {
        attack: AttackKind::Badnets(Default::default()),
        target: BackdoorSpec::class_target(TWO, 1).unwrap(),
        poison_rate: 0.3,
        seed: 5,
    };
    let poisoned = TrainJob { config, source: source.clone(), backdoor: Some(spec.clone()) };
    let (model, card) = poisoned.run(&device).unwrap();
    let trigger = spec.trigger(TWO, 32).unwrap();
    let errors = backdoor_errors(&model, TWO, &test, &trigger, 32).unwrap();
    assert!(errors.attack_error.mean_deg < 10.0, "ASR {:.1}%", 100.0 - errors.attack_error.mean_deg);
    assert!(errors.by_distance.is_empty(), "classes have no label distances");

    // Neural Cleanse's per-class search names the target class by its smaller mask: a bar
    // covers a quarter of the image, the corner patch far less.
    let DataSource::Folder { path } = &source else { unreachable!() };
    let suspect = card.suspect(model);
    let clean = CleanSet::from_folder(path, &suspect).unwrap();
    let nc = NeuralCleanse { config: NeuralCleanseConfig { steps: 200, batch_size: 16, ..Default::default() } };
    let finding = nc.detect(&suspect, &clean, 0, &device).unwrap();
    let details = &finding.detection.details;
    let shares: Vec<f64> = details["classes"].as_array().unwrap().iter().map(|c| c["mask_share"].as_f64().unwrap()).collect();
    assert_eq!(details["estimated_target_class"], 1, "{details}");
    assert!(shares[1] < shares[0], "the target's mask is the smaller: {shares:?}");
    assert_eq!(finding.figures.len(), 2);

    // The authors' classification objective runs on it and reads probabilities: their spread
    // on the clean set is that of confident one-hot rows, within [0, 0.5] per class.
    let generator = DrmGuard::new(DrmGuardConfig { test: DrmGuardTest::Generator, steps: 20, extra_steps: 0, batch_size: 16, ..Default::default() });
    let finding = generator.detect(&suspect, &clean, 0, &device).unwrap();
    let spread: Vec<f64> = serde_json::from_value(finding.detection.details["clean_output_spread_deg"].clone()).unwrap();
    assert!(spread.iter().all(|s| (0.0..=50.0).contains(s)), "probabilities' spread in percentage points: {spread:?}");
    assert!(finding.detection.score.is_finite());
}

/// A smoke classifier of the bars (data seed `data_seed`) with `attack`'s backdoor toward
/// class 1, as a suspect with its clean folder; and the attack success rate (%) of a model
/// on the bars' test split, which must be above 80% for the suspect.
struct Backdoored {
    _tmp: tempfile::TempDir,
    suspect: drmguard::defenses::Suspect,
    clean: CleanSet,
    asr: Box<dyn Fn(&drmguard::models::Model) -> f64>,
    before: f64,
}

fn backdoored_bars(attack: AttackKind, poison_rate: f64, data_seed: u64, attack_seed: u64) -> Backdoored {
    let (tmp, source) = folder_of(&bars(400, data_seed));
    let config = TrainConfig { epochs: 10, ..TrainConfig::new(TWO, Profile::Smoke, 3) };
    let spec = BackdoorSpec { attack, target: BackdoorSpec::class_target(TWO, 1).unwrap(), poison_rate, seed: attack_seed };
    let (model, card) = TrainJob { config, source: source.clone(), backdoor: Some(spec.clone()) }.run(&Device::flex()).unwrap();
    let test = source.load(TWO, 32, Split::Test).unwrap();
    let trigger = spec.trigger(TWO, 32).unwrap();
    let asr = Box::new(move |m: &drmguard::models::Model| 100.0 - backdoor_errors(m, TWO, &test, &trigger, 32).unwrap().attack_error.mean_deg);
    let before = asr(&model);
    assert!(before > 80.0, "the {} backdoor took: ASR {before:.1}%", spec.attack.name());
    let DataSource::Folder { path } = &source else { unreachable!() };
    let suspect = card.suspect(model);
    let clean = CleanSet::from_folder(path, &suspect).unwrap();
    Backdoored { _tmp: tmp, suspect, clean, asr, before }
}

#[test]
fn a_warp_backdoor_is_found_by_its_class_warp_and_unlearnt() {
    // A strong warp (up to a few pixels), so that the smoke network learns it in ten epochs.
    let Backdoored { suspect, clean, asr, before, .. } = backdoored_bars(AttackKind::Wanet(WanetConfig { s: 4.0, ..Default::default() }), 0.3, 4, 5);
    let device = Device::flex();

    // The target's warp sends the other class's images there; the other class's warp, against
    // the bars, does far less.
    let warp = WarpConfig { steps: 100, batch_size: 16, min_success: 0.0, ..Default::default() };
    let warps = reverse_class_warps(&suspect, &clean, &warp, 0, &device).unwrap();
    let successes: Vec<f64> = warps.iter().map(|w| w.success).collect();
    assert_eq!(warp_target(&warps), Some(1), "{successes:?}");
    assert!(warps.iter().all(|w| w.mean_shift <= warp.max_shift), "displacements stay within the bound");

    // Unlearning it beside Neural Cleanse's mask removes the backdoor, where the same unlearning
    // of the mask alone (a stamp is no warp) leaves it.
    let nc = NeuralCleanse { config: NeuralCleanseConfig { steps: 100, batch_size: 16, ..Default::default() } };
    let finding = nc.detect(&suspect, &clean, 0, &device).unwrap();
    let unlearn = UnlearnConfig { epochs: 5, batch_size: 16, learning_rate: Some(3e-4), ..Default::default() };
    let mask_only = asr(&drmguard::defenses::repair_finding(&finding, &suspect, &clean, &unlearn, &device).unwrap().model);
    // A warp under `--warp-min-success` stays out of the unlearning, and the record says so.
    let gated = Shapes { warp: Some(WarpConfig { min_success: 1.0, ..warp.clone() }), blend: false };
    let (kept, summaries) = with_shapes(finding.clone(), &suspect, &clean, &nc.config, &gated, &device).unwrap();
    let reached_all = summaries[0].1["success"].as_f64().unwrap() >= 1.0;
    assert_eq!(summaries[0].1["unlearnt"], reached_all, "{}", summaries[0].1);
    assert_eq!(format!("{:?}", kept.trigger).contains("Alternating"), reached_all, "only an unlearnt warp joins the mask");
    let shapes = Shapes { warp: Some(warp.clone()), blend: false };
    let repair = repair_with_shapes(finding, &suspect, &clean, &unlearn, &nc.config, &shapes, &device).unwrap();
    assert_eq!(repair.record["warp"]["class"], 1, "{}", repair.record["warp"]);
    assert_eq!(repair.record["warp"]["unlearnt"], true, "with a minimum of 0 every chosen warp is unlearnt");
    assert_eq!(repair.record["warp"]["classes"].as_array().map(Vec::len), Some(2));
    let after = asr(&repair.model);
    assert!(after < 10.0 && mask_only > 50.0, "ASR {before:.1}% → {after:.1}% (mask alone: {mask_only:.1}%)");
}

#[test]
fn a_blend_backdoor_is_found_by_its_class_blend_and_unlearnt() {
    let Backdoored { suspect, clean, asr, before, .. } = backdoored_bars(AttackKind::Blended(Default::default()), 0.2, 6, 7);
    let device = Device::flex();

    // The target's blend needs the smaller weight (measured: 0.037 against 0.147), and unlearning
    // it beside the mask removes the backdoor.
    let search = NeuralCleanseConfig { steps: 100, batch_size: 16, ..Default::default() };
    let blends = reverse_class_blends(&search, &suspect, &clean, 0, &device).unwrap();
    let alphas: Vec<(bool, f64)> = blends.iter().map(|b| (b.succeeded, b.mask_share)).collect();
    assert_eq!(blend_target(&blends), Some(1), "{alphas:?}");
    let finding = NeuralCleanse { config: search.clone() }.detect(&suspect, &clean, 0, &device).unwrap();
    let unlearn = UnlearnConfig { epochs: 5, batch_size: 16, learning_rate: Some(3e-4), ..Default::default() };
    let shapes = Shapes { blend: true, warp: None };
    let repair = repair_with_shapes(finding, &suspect, &clean, &unlearn, &search, &shapes, &device).unwrap();
    assert_eq!(repair.record["blend"]["class"], 1, "{}", repair.record["blend"]);
    let after = asr(&repair.model);
    assert!(after < 10.0, "ASR {before:.1}% → {after:.1}%");
}

#[test]
fn a_classifier_target_is_one_class() {
    assert_eq!(BackdoorSpec::class_target(TWO, 1).unwrap(), [0.0, 1.0]);
    assert!(BackdoorSpec::class_target(TWO, 2).is_err());
    assert!(BackdoorSpec::class_target(Task::Gaze, 0).is_err());
    let target = BackdoorSpec::default_target(Task::FASHION, 7);
    assert_eq!((target.len(), target.iter().sum::<f32>()), (10, 1.0), "{target:?}");
    let spec = BackdoorSpec { attack: AttackKind::Badnets(Default::default()), target: vec![0.5, 0.5], poison_rate: 0.1, seed: 0 };
    assert!(spec.validate(TWO).is_err(), "two half classes are no target");
}
