//! Model shapes, parameter names, saving and loading, and that training lowers the loss.

use burn::tensor::{Device, Tensor};
use drmguard::data::{DataSource, Split, synthesize};
use drmguard::model_file::{self, CARD_FORMAT_VERSION, ModelCard, TrainingRecord, card_path};
use drmguard::models::inference::predict;
use drmguard::models::{Architecture, ModelSpec, Normalization, Regressor};
use drmguard::task::Task;
use drmguard::train::{Profile, TrainConfig, train};

fn spec(architecture: Architecture, outputs: usize) -> ModelSpec {
    ModelSpec { architecture, input_size: 32, input_range: [0.0, 1.0], channel_order: Default::default(), normalization: Normalization::imagenet(), outputs }
}

#[test]
fn resnet18_splits_into_features_and_a_linear_head() {
    let device = Device::flex();
    let model = spec(Architecture::Resnet18 { width: 4 }, 3).init(&device, 0).unwrap();
    // Test inputs come from the data generator, not the backend's process-wide random generator,
    // which tests running in parallel share.
    let (x, _) = synthesize(Task::Gaze, 2, 32, 9).unwrap().batch(&[0, 1], &device);
    let z = model.features(x.clone());
    assert_eq!(z.dims(), [2, 32], "features are 8·width wide");
    assert_eq!(model.head_weight().dims(), [3, 32], "one weight row per output");
    let y = model.forward(x);
    assert_eq!(y.dims(), [2, 3]);
    // H is linear without activation: H(z) = z·Wᵀ + b.
    let manual = z.clone().matmul(model.head_weight().transpose());
    let bias = model.head(z.zeros_like());
    let diff = (manual + bias - model.head(z)).abs().max().into_scalar::<f32>();
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn small_cnn_has_the_documented_shapes() {
    let device = Device::flex();
    let model = spec(Architecture::SmallCnn { width: 4 }, 2).init(&device, 0).unwrap();
    let x = Tensor::<4>::zeros([5, 3, 32, 32], &device);
    assert_eq!(model.features(x.clone()).dims(), [5, 16]);
    assert_eq!(model.forward(x).dims(), [5, 2]);
}

/// Tensor names in a safetensors file's header.
fn tensor_names(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect()
}

fn tiny_training() -> (TrainConfig, drmguard::data::Dataset, drmguard::data::Dataset) {
    let mut config = TrainConfig::new(Task::Gaze, Profile::Smoke, 3);
    config.samples = 240;
    config.epochs = 6;
    let ds = synthesize(Task::Gaze, config.samples, config.image_size, config.seed).unwrap();
    (config, ds.split(Split::Train), ds.split(Split::Val))
}

#[test]
fn training_on_tiny_data_lowers_the_loss() {
    let (config, train_set, val_set) = tiny_training();
    let (_, history) = train(&config, &train_set, &val_set, None, &Device::flex()).unwrap();
    let first = history.first().unwrap().train_loss;
    let last = history.last().unwrap().train_loss;
    assert!(last < 0.85 * first, "loss should fall: {first} -> {last}");
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let (mut config, train_set, val_set) = tiny_training();
    config.epochs = 1;
    let (a, _) = train(&config, &train_set, &val_set, None, &Device::flex()).unwrap();
    let (b, _) = train(&config, &train_set, &val_set, None, &Device::flex()).unwrap();
    assert_eq!(predict(&a, &val_set, 16).unwrap(), predict(&b, &val_set, 16).unwrap());
}

#[test]
fn saved_models_load_back_with_torchvision_names() {
    let device = Device::flex();
    let mut config = TrainConfig::new(Task::HeadPose, Profile::Smoke, 0);
    config.architecture = Architecture::Resnet18 { width: 4 };
    let model = config.model_spec().init(&device, 0).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.safetensors");
    let card = ModelCard {
        format_version: CARD_FORMAT_VERSION,
        drmguard_version: "test".into(),
        task: Task::HeadPose,
        output_names: vec!["yaw".into(), "pitch".into(), "roll".into()],
        output_units: "radians".into(),
        model: config.model_spec(),
        trained: Some(TrainingRecord {
            training: config.clone(),
            data: DataSource::Synthetic { task: Task::HeadPose, n: 10, seed: 0, image_size: 32 },
            data_hash: String::new(),
            label_mean: vec![0.0; 3],
            history: vec![],
            train_seconds: 0.0,
        }),
        imported: None,
        backdoor: None,
        mitigation: None,
    };
    model_file::save(&path, &model, &card).unwrap();
    let names = tensor_names(&path);
    for expected in ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var", "layer4.1.bn2.bias", "layer4.1.bn2.weight", "fc.weight", "fc.bias"] {
        assert!(names.iter().any(|n| n == expected), "missing {expected} in {names:?}");
    }
    let (loaded, _) = model_file::load(&path, &device).unwrap();
    let data = synthesize(Task::HeadPose, 8, 32, 1).unwrap();
    assert_eq!(predict(&model, &data, 8).unwrap(), predict(&loaded, &data, 8).unwrap());

    // A sidecar that disagrees with the weights is refused.
    let mut wrong = card.clone();
    wrong.model.architecture = Architecture::Resnet18 { width: 8 };
    drmguard::io::write_json(&card_path(&path), &wrong).unwrap();
    let err = model_file::load(&path, &device).unwrap_err().to_string();
    assert!(err.contains("m.safetensors"), "{err}");

    // A missing sidecar is named.
    std::fs::remove_file(card_path(&path)).unwrap();
    let err = model_file::load(&path, &device).unwrap_err().to_string();
    assert!(err.contains("m.json") && err.contains("sidecar"), "{err}");
}
