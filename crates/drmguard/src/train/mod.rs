//! Supervised training: L1 loss for regression, cross-entropy for classes, Adam, cosine
//! learning-rate schedule, validation after every epoch.

pub mod poison;
pub mod profile;

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::inference::evaluate;
use crate::models::{Architecture, Model, ModelSpec, Normalization, Regressor};
use crate::task::Task;

pub use poison::{PoisonedBatch, Poisoner};
pub use profile::{Profile, ProfileDefaults};

/// The training loss of `task` for `outputs` against `labels` (both `[n, d]`): the mean absolute
/// error for regression (robust to the synthetic labels' outliers), the cross-entropy of the
/// logits against one-hot labels for classes.
pub fn task_loss(task: Task, outputs: Tensor<2>, labels: Tensor<2>) -> Tensor<1> {
    if task.is_classification() {
        let log_probabilities = burn::tensor::activation::log_softmax(outputs, 1);
        (log_probabilities * labels).sum_dim(1).mean().neg()
    } else {
        (outputs - labels).abs().mean()
    }
}

/// The resolved training configuration (profile defaults plus overrides), stored in the sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub task: Task,
    pub profile: Profile,
    pub architecture: Architecture,
    pub image_size: u32,
    /// Synthetic samples drawn when no data folder is given (all splits together).
    pub samples: usize,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of Adam; the cosine schedule decays it to `min_learning_rate`.
    pub learning_rate: f64,
    pub min_learning_rate: f64,
    pub seed: u64,
}

impl TrainConfig {
    pub fn new(task: Task, profile: Profile, seed: u64) -> Self {
        let d = profile.defaults();
        TrainConfig {
            task,
            profile,
            architecture: d.architecture,
            image_size: d.image_size,
            samples: d.samples,
            epochs: d.epochs,
            batch_size: d.batch_size,
            learning_rate: d.learning_rate,
            min_learning_rate: d.learning_rate * 0.01,
            seed,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.architecture.validate()?;
        crate::data::validate_image_size(self.image_size)?;
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", "0 (need at least 1)"));
        }
        if self.batch_size < 2 {
            return Err(Error::invalid("batch size", format!("{} (batch norm needs at least 2)", self.batch_size)));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(Error::invalid("learning rate", format!("{}", self.learning_rate)));
        }
        Ok(())
    }

    pub fn model_spec(&self) -> ModelSpec {
        ModelSpec {
            architecture: self.architecture.clone(),
            input_size: self.image_size,
            input_range: [0.0, 1.0],
            channel_order: Default::default(),
            normalization: Normalization::imagenet(),
            outputs: self.task.output_dim(),
        }
    }

    /// Cosine decay from `learning_rate` to `min_learning_rate` over `total` steps.
    pub fn learning_rate_at(&self, step: usize, total: usize) -> f64 {
        cosine_learning_rate(self.learning_rate, self.min_learning_rate, step, total)
    }
}

/// Cosine decay from `peak` to `min` over `total` steps.
pub fn cosine_learning_rate(peak: f64, min: f64, step: usize, total: usize) -> f64 {
    let t = step as f64 / total.max(1) as f64;
    min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// What happened in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_error_deg: f64,
    pub seconds: f64,
}

/// Trains a fresh model on `train`, validating on `val` after every epoch. With a `backdoor`, the
/// training batches are poisoned as its plan says (validation stays clean).
pub fn train(
    config: &TrainConfig,
    train: &Dataset,
    val: &Dataset,
    backdoor: Option<&dyn Poisoner>,
    device: &Device,
) -> Result<(Model, Vec<EpochRecord>)> {
    config.validate()?;
    if train.len() < config.batch_size {
        return Err(Error::Data(format!(
            "the training split has {} samples, fewer than one batch of {}",
            train.len(),
            config.batch_size
        )));
    }
    if val.is_empty() {
        return Err(Error::Data("the validation split is empty".into()));
    }
    for ds in [train, val] {
        if ds.image_size != config.image_size || ds.dim() != config.task.output_dim() {
            return Err(Error::Data(format!(
                "data of {}×{} images with {} outputs do not fit a {} model on {}×{} images",
                ds.image_size,
                ds.image_size,
                ds.dim(),
                config.task,
                config.image_size,
                config.image_size
            )));
        }
    }
    let device = device.clone().autodiff();
    let mut model = config.model_spec().init(&device, config.seed)?;
    if config.task == Task::Landmarks {
        // Angle labels are centred at zero, where a fresh head starts; image coordinates sit
        // around 0.5, so the head starts at the training labels' mean instead of far from all.
        let mean = crate::metrics::column_means(&train.labels, train.dim());
        model = model.map_head(|mut fc| {
            fc.bias = Some(burn::module::Param::from_tensor(burn::tensor::Tensor::<1>::from_floats(mean.as_slice(), &device)));
            fc
        });
    }
    let mut optim = AdamConfig::new().init();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);

    let steps_per_epoch = train.len() / config.batch_size;
    let total = steps_per_epoch * config.epochs;
    let bar = crate::progress::progress_bar(&format!("train {}", config.task), total);
    let mut history = Vec::with_capacity(config.epochs);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut step = 0;
    for epoch in 1..=config.epochs {
        let started = Instant::now();
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0f64;
        for batch in order.chunks_exact(config.batch_size) {
            let (x, y, rows) = match backdoor {
                Some(b) => {
                    let batch = b.training_batch(train, batch, &mut rng, &device);
                    (batch.images, batch.labels, Some((b, batch.clean, batch.poisoned)))
                }
                None => {
                    let (x, y) = train.batch(batch, &device);
                    (x, y, None)
                }
            };
            let z = model.features(x);
            let mut loss = task_loss(config.task, model.head(z.clone()), y);
            if let Some((b, clean, poisoned)) = rows
                && let Some(penalty) = b.feature_penalty(&model, z, clean, poisoned)
            {
                loss = loss + penalty;
            }
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            if !loss_value.is_finite() {
                return Err(Error::Numerical(format!(
                    "the training loss became {loss_value} at epoch {epoch}, step {step}"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(config.learning_rate_at(step, total), model, grads);
            loss_sum += loss_value;
            step += 1;
            bar.set_message(format!("epoch {epoch}/{}, loss {loss_value:.4}", config.epochs));
            bar.inc(1);
        }
        let val_error = evaluate(&model.valid(), config.task, val, config.batch_size)?;
        let record = EpochRecord {
            epoch,
            train_loss: loss_sum / steps_per_epoch as f64,
            val_error_deg: val_error.mean_deg,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            epoch,
            train_loss = record.train_loss,
            val_error_deg = record.val_error_deg,
            seconds = record.seconds,
            "epoch done"
        );
        history.push(record);
    }
    bar.finish_and_clear();
    Ok((model.valid(), history))
}

/// Settings of a fine-tuning run on a small set (mitigation, the fine-tuning baseline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak Adam learning rate, cosine-decayed to 1% of it.
    pub learning_rate: f64,
    pub seed: u64,
}

impl FineTuneConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size < 2 {
            return Err(Error::invalid("fine-tuning epochs / batch size", format!("{} / {}", self.epochs, self.batch_size)));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(Error::invalid("fine-tuning learning rate", format!("{}", self.learning_rate)));
        }
        Ok(())
    }
}

/// Fine-tunes all weights of `model` on `data` with `task`'s training loss ([`task_loss`];
/// BatchNorm in training mode); returns the model in inference mode and the mean loss of each
/// epoch.
pub fn fine_tune(model: &Model, task: Task, data: &Dataset, config: &FineTuneConfig, device: &Device) -> Result<(Model, Vec<f64>)> {
    fine_tune_constrained(model, task, data, config, device, &|m| m)
}

/// [`fine_tune`], with `constrain` applied to the model before the first step and after every
/// step (e.g. to keep pruned weights at zero).
pub fn fine_tune_constrained(
    model: &Model,
    task: Task,
    data: &Dataset,
    config: &FineTuneConfig,
    device: &Device,
    constrain: &dyn Fn(Model) -> Model,
) -> Result<(Model, Vec<f64>)> {
    fine_tune_general(model, task, data, config, device, constrain, &mut |_, x, _, _| Ok(x))
}

/// Makes the images a fine-tuning step learns from out of the batch's images and labels (both on
/// the base device), given the model as it stands and the fine-tuning's random stream: adversarial
/// training draws its examples here.
pub type BatchInputs<'a> = dyn FnMut(&Model, Tensor<4>, &Tensor<2>, &mut ChaCha8Rng) -> Result<Tensor<4>> + 'a;

/// [`fine_tune`] on the images `inputs` makes of each batch.
pub fn fine_tune_on_inputs(
    model: &Model,
    task: Task,
    data: &Dataset,
    config: &FineTuneConfig,
    device: &Device,
    inputs: &mut BatchInputs,
) -> Result<(Model, Vec<f64>)> {
    fine_tune_general(model, task, data, config, device, &|m| m, inputs)
}

fn fine_tune_general(
    model: &Model,
    task: Task,
    data: &Dataset,
    config: &FineTuneConfig,
    device: &Device,
    constrain: &dyn Fn(Model) -> Model,
    inputs: &mut BatchInputs,
) -> Result<(Model, Vec<f64>)> {
    config.validate()?;
    if data.len() < config.batch_size {
        return Err(Error::Data(format!("{} samples are fewer than one batch of {}", data.len(), config.batch_size)));
    }
    let mut model = constrain(model.clone().fork(&device.clone().autodiff()).train());
    let mut optim = AdamConfig::new().init();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let steps_per_epoch = data.len() / config.batch_size;
    let total = steps_per_epoch * config.epochs;
    let mut losses = Vec::with_capacity(config.epochs);
    let mut step = 0;
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for batch in order.chunks_exact(config.batch_size) {
            let (x, y) = data.batch(batch, device);
            let x = inputs(&model, x, &y, &mut rng)?;
            let loss = task_loss(task, model.forward(x.autodiff()), y.autodiff());
            let value = loss.clone().into_scalar::<f32>() as f64;
            if !value.is_finite() {
                return Err(Error::Numerical(format!("the fine-tuning loss became {value} at epoch {epoch}")));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = cosine_learning_rate(config.learning_rate, config.learning_rate * 0.01, step, total);
            model = constrain(optim.step(lr, model, grads));
            sum += value;
            step += 1;
        }
        losses.push(sum / steps_per_epoch as f64);
        tracing::debug!(epoch, loss = sum / steps_per_epoch as f64, "fine-tuning epoch done");
    }
    Ok((model.valid(), losses))
}
