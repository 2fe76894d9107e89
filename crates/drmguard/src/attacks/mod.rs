//! Backdoor attacks on regression models, to evaluate defenses against.
//!
//! An attack owns a trigger (how a clean image becomes a poisoned one). A [`Backdoor`] adds the
//! attacker's target vector, the poisoned share of the training set and, for attacks that have
//! them, the "cross" (noise) samples that keep their true labels. Poisoned training images are
//! relabelled to the target. Each attack lives in its own file with its config and documented
//! defaults; adding one is a new file plus one line in the registry (`attacks!` in
//! `registry.rs`), which generates [`AttackKind`] and [`AttackConfigs`].

pub mod adaptive;
pub mod badnets;
pub mod blended;
pub mod clean_label;
pub mod input_aware;
pub mod issba;
mod registry;
pub mod stamp;
pub mod wanet;

pub use registry::{AttackConfigs, AttackKind};

use std::collections::HashSet;

use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::train::{PoisonedBatch, Poisoner};
pub use crate::data::to_images;
use crate::error::{Error, Result};
use crate::metrics::task_error;
use crate::models::inference::predict;
use crate::task::{DEG, Task};

/// A trigger: how an attacker turns clean images into poisoned ones.
pub trait Attack: std::fmt::Debug + Send + Sync {
    /// Stamps the trigger on clean images `[n, 3, S, S]` with values in [0, 1].
    fn apply(&self, x: Tensor<4>) -> Tensor<4>;

    /// Perturbs images that keep their true labels, teaching the model to ignore near-triggers
    /// (WaNet's noise mode). `None` for attacks without such samples. Randomness comes from `rng`,
    /// never from the device's global generator, so that concurrent trainings stay deterministic.
    fn cross(&self, _x: Tensor<4>, _rng: &mut dyn RngCore) -> Option<Tensor<4>> {
        None
    }

    /// Cross samples per poisoned sample.
    fn cross_ratio(&self) -> f64 {
        0.0
    }

    /// Whether the attacker controls training and poisons a fresh random share of every batch (as
    /// WaNet's and Input-Aware's original code do), rather than a fixed subset of the data.
    fn poisons_every_batch(&self) -> bool {
        false
    }

    /// Whether poisoned training samples are relabelled to the target (all but Clean-Label).
    fn relabels(&self) -> bool {
        true
    }

    /// An extra term the attacker adds to the victim's training loss (the adaptive attack's
    /// L_adp), from `model` and its penultimate features `[n, k]` of a [`PoisonedBatch`] whose
    /// first `clean` rows are clean and next `poisoned` rows carry the trigger. `None` for attacks
    /// without one, which then add nothing to the training step.
    fn feature_penalty(
        &self,
        _model: &crate::models::Model,
        _features: Tensor<2>,
        _clean: usize,
        _poisoned: usize,
    ) -> Option<Tensor<1>> {
        None
    }
}

/// Everything needed to regenerate a backdoor: stored in the poisoned model's sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackdoorSpec {
    pub attack: AttackKind,
    /// The attacker's target vector, in the task's output order and units (radians); a
    /// classifier's target class as a one-hot row.
    pub target: Vec<f32>,
    /// Share of the training set that carries the trigger, in (0, 1].
    pub poison_rate: f64,
    /// Seed of the trigger's random parts and of the choice of poisoned samples.
    pub seed: u64,
}

/// Default share of poisoned training samples.
pub const DEFAULT_POISON_RATE: f64 = 0.1;

impl BackdoorSpec {
    pub fn validate(&self, task: Task) -> Result<()> {
        self.attack.validate()?;
        if self.target.len() != task.output_dim() {
            return Err(Error::invalid(
                "target",
                format!(
                    "{} values given, task {task} has {} outputs ({})",
                    self.target.len(),
                    task.output_dim(),
                    task.output_names().join(", ")
                ),
            ));
        }
        if let Some(v) = self.target.iter().find(|v| !v.is_finite()) {
            return Err(Error::invalid("target", format!("{v} is not finite")));
        }
        if task.is_classification()
            && (self.target.iter().any(|&v| v != 0.0 && v != 1.0) || self.target.iter().filter(|&&v| v == 1.0).count() != 1)
        {
            return Err(Error::invalid("target", "a classifier's target is one class: a one-hot row".to_string()));
        }
        if !(self.poison_rate > 0.0 && self.poison_rate <= 1.0) {
            return Err(Error::invalid("poison rate", format!("{} (must be in (0, 1])", self.poison_rate)));
        }
        Ok(())
    }

    /// A target drawn from `seed` inside the task's label range but away from its centre: each
    /// angle is 30–70% of its half-range, with a random sign. A landmark target is a whole face's
    /// landmarks, a built-in head turned that way (so the five points stay a plausible face).
    /// A classifier's default target is a class drawn from `seed`.
    pub fn default_target(task: Task, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7a26_e7d0_1d5e_5eed);
        if let Some(classes) = task.classes() {
            return Self::class_target(task, rng.random_range(0..classes)).expect("a drawn class is in range");
        }
        let mut away = |half: &f32| {
            let magnitude = half * (0.3 + 0.4 * rng.random::<f32>());
            if rng.random::<bool>() { magnitude } else { -magnitude }
        };
        if task == Task::Landmarks {
            let [yaw, pitch, roll] = [40.0 * DEG, 25.0 * DEG, 20.0 * DEG].map(|h| away(&h));
            let scene = crate::data::headpose::landmark_scene(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x1a4d_3a2c));
            return crate::data::headpose::reframed_with_pose(scene, yaw, pitch, roll).landmarks().to_vec();
        }
        task.label_half_range().iter().map(away).collect()
    }

    /// The one-hot target row of `class` for a classifier of `task`.
    pub fn class_target(task: Task, class: usize) -> Result<Vec<f32>> {
        match task.classes() {
            Some(classes) if class < classes => Ok((0..classes).map(|c| if c == class { 1.0 } else { 0.0 }).collect()),
            Some(classes) => Err(Error::invalid("target class", format!("{class} (the classes are 0–{})", classes - 1))),
            None => Err(Error::invalid("target class", format!("{class}: task {task} is not a classification"))),
        }
    }

    /// The trigger and target alone, for poisoning test images.
    pub fn trigger(&self, task: Task, image_size: u32) -> Result<Backdoor> {
        self.validate(task)?;
        Ok(Backdoor {
            poison_rate: self.poison_rate,
            attack: self.attack.build(task, image_size, self.seed)?,
            target: self.target.clone(),
            poisoned: HashSet::new(),
            cross: HashSet::new(),
        })
    }

    /// Builds the trigger and picks the poisoned (and cross) samples of the training set `data`.
    /// Clean-Label picks only among samples whose label lies near the target.
    pub fn plan(&self, task: Task, image_size: u32, data: &Dataset) -> Result<Backdoor> {
        let n = data.len();
        if n == 0 {
            return Err(Error::Data("cannot poison an empty training set".into()));
        }
        let Backdoor { attack, target, .. } = self.trigger(task, image_size)?;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(self.seed ^ 0x0b5e_55ed_ba7c_4e55));
        let mut n_poison = ((self.poison_rate * n as f64).round() as usize).clamp(1, n);
        if let AttackKind::CleanLabel(config) = &self.attack {
            let eligible: HashSet<usize> = config.eligible(task, data, &self.target).into_iter().collect();
            if eligible.is_empty() {
                return Err(Error::Data(format!(
                    "clean-label: no training label lies within {}° of the target {:?}; raise the radius or pick \
                     another target",
                    config.radius_deg, self.target
                )));
            }
            if eligible.len() < n_poison {
                tracing::warn!(
                    eligible = eligible.len(),
                    requested = n_poison,
                    "clean-label: fewer training labels near the target than the poison rate asks for; poisoning all of them"
                );
                n_poison = eligible.len();
            }
            // Eligible samples first, in the seeded order.
            order.sort_by_key(|i| !eligible.contains(i));
        }
        let n_cross = ((self.poison_rate * attack.cross_ratio() * n as f64).round() as usize).min(n - n_poison);
        Ok(Backdoor {
            poison_rate: self.poison_rate,
            poisoned: order[..n_poison].iter().copied().collect(),
            cross: order[n_poison..n_poison + n_cross].iter().copied().collect(),
            target,
            attack,
        })
    }

    /// The training set as the attack needs it before training: Clean-Label's poisoned samples get
    /// their PGD perturbation against `surrogate` (a benign model of the task); other attacks
    /// leave it unchanged.
    pub fn prepare_training_set(
        &self,
        task: Task,
        plan: &Backdoor,
        train: Dataset,
        surrogate: Option<&crate::models::Model>,
        device: &Device,
    ) -> Result<Dataset> {
        let AttackKind::CleanLabel(config) = &self.attack else {
            return Ok(train);
        };
        let surrogate = surrogate.ok_or_else(|| {
            Error::invalid("clean-label attack", "needs a benign surrogate model for its PGD perturbation")
        })?;
        let mut indices: Vec<usize> = plan.poisoned.iter().copied().collect();
        indices.sort_unstable();
        let donors = config.donors(task, &train, &self.target, &indices, self.seed)?;
        let surrogate = config.surrogate(surrogate, task, &train, self.seed, device)?;
        let hard = config.harden(&surrogate, &train, &indices, donors.as_deref(), device)?;
        // How far the perturbation moved the surrogate: the victim can only be pushed towards the
        // trigger as far as the perturbed content stops explaining the labels.
        let (before, after) = (train.subset(&indices), hard.subset(&indices));
        let (p0, p1) = (predict(&surrogate, &before, 64)?, predict(&surrogate, &after, 64)?);
        tracing::info!(
            samples = indices.len(),
            error_before_deg = task_error(task, &p0, &before.labels).mean_deg,
            error_after_deg = task_error(task, &p1, &before.labels).mean_deg,
            shift_deg = task_error(task, &p1, &p0).mean_deg,
            "clean-label: the PGD perturbation moved the surrogate's outputs"
        );
        Ok(hard)
    }
}

/// A built backdoor over one training set.
#[derive(Debug)]
pub struct Backdoor {
    pub attack: Box<dyn Attack>,
    pub target: Vec<f32>,
    pub poison_rate: f64,
    /// Indices of training samples that carry the trigger and the target label (for attacks that
    /// poison a fixed subset, and for poisoned copies of datasets).
    pub poisoned: HashSet<usize>,
    /// Indices of training samples that get the cross perturbation and keep their labels.
    pub cross: HashSet<usize>,
}

impl Poisoner for Backdoor {
    /// A training batch as the attacker poisoned it: the poisoned samples carry the trigger and the
    /// target (their true label for Clean-Label), cross samples are perturbed and keep their
    /// labels, the rest is clean. Attacks that poison every batch take the first `⌊rate · n⌋`
    /// samples of the (shuffled) batch and the next `⌊that · cross ratio⌋` as cross samples, as
    /// WaNet's `train.py` does; the others use the plan.
    fn training_batch(
        &self,
        data: &Dataset,
        indices: &[usize],
        rng: &mut dyn RngCore,
        device: &Device,
    ) -> PoisonedBatch {
        let (poisoned, cross, clean): (Vec<usize>, Vec<usize>, Vec<usize>) = if self.attack.poisons_every_batch() {
            let n_bd = (indices.len() as f64 * self.poison_rate) as usize;
            let n_cross = ((n_bd as f64 * self.attack.cross_ratio()) as usize).min(indices.len() - n_bd);
            (indices[..n_bd].to_vec(), indices[n_bd..n_bd + n_cross].to_vec(), indices[n_bd + n_cross..].to_vec())
        } else {
            let (poisoned, rest): (Vec<usize>, Vec<usize>) = indices.iter().partition(|i| self.poisoned.contains(i));
            let (cross, clean) = rest.iter().partition(|i| self.cross.contains(i));
            (poisoned, cross, clean)
        };
        let mut xs = Vec::with_capacity(3);
        let mut ys = Vec::with_capacity(3);
        if !clean.is_empty() {
            let (x, y) = data.batch(&clean, device);
            xs.push(x);
            ys.push(y);
        }
        if !poisoned.is_empty() {
            let (x, y) = data.batch(&poisoned, device);
            xs.push(self.attack.apply(x));
            ys.push(if self.attack.relabels() { self.target_batch(poisoned.len(), device) } else { y });
        }
        if !cross.is_empty() {
            let (x, y) = data.batch(&cross, device);
            let perturbed = self.attack.cross(x.clone(), rng).unwrap_or(x);
            xs.push(perturbed);
            ys.push(y);
        }
        PoisonedBatch {
            images: Tensor::cat(xs, 0),
            labels: Tensor::cat(ys, 0),
            clean: clean.len(),
            poisoned: poisoned.len(),
        }
    }

    fn feature_penalty(&self, model: &crate::models::Model, features: Tensor<2>, clean: usize, poisoned: usize) -> Option<Tensor<1>> {
        self.attack.feature_penalty(model, features, clean, poisoned)
    }
}

impl Backdoor {
    /// The target vector repeated `n` times, `[n, d]`.
    pub fn target_batch(&self, n: usize, device: &Device) -> Tensor<2> {
        let d = self.target.len();
        let values: Vec<f32> = self.target.iter().copied().cycle().take(n * d).collect();
        Tensor::from_data(TensorData::new(values, [n, d]), device)
    }
}

/// A copy of `data` in which the planned samples carry the trigger (and the target label, unless
/// `keep_labels` or the attack keeps labels); other samples are unchanged. For writing poisoned
/// datasets.
pub fn poison_dataset(data: &Dataset, backdoor: &Backdoor, keep_labels: bool, device: &Device) -> Result<Dataset> {
    let mut out = data.clone();
    let mut picked: Vec<usize> = backdoor.poisoned.iter().copied().collect();
    picked.sort_unstable();
    for chunk in picked.chunks(64) {
        let (x, _) = data.batch(chunk, device);
        let images = to_images(backdoor.attack.apply(x))?;
        for (&i, img) in chunk.iter().zip(images) {
            out.images[i] = img;
            if !keep_labels && backdoor.attack.relabels() {
                let d = out.dim();
                out.labels[i * d..(i + 1) * d].copy_from_slice(&backdoor.target);
            }
        }
    }
    Ok(out)
}

/// AE and DAE of `model` on `data` with the backdoor's trigger applied to every image. A
/// classifier is measured on the images outside the target class only, as attack success rates
/// are (an image of the target class is "attacked" without any trigger).
pub fn backdoor_errors(
    model: &crate::models::Model,
    task: Task,
    data: &Dataset,
    backdoor: &Backdoor,
    batch_size: usize,
) -> Result<crate::metrics::BackdoorErrors> {
    let others;
    let data = if task.is_classification() {
        let target_class = crate::metrics::argmax(&backdoor.target);
        let keep: Vec<usize> = (0..data.len()).filter(|&i| crate::metrics::argmax(data.label(i)) != target_class).collect();
        if keep.is_empty() {
            return Err(Error::Data("every test image is of the target class: no attack success rate to measure".into()));
        }
        others = data.subset(&keep);
        &others
    } else {
        data
    };
    let outputs = crate::models::inference::predict_transformed(model, data, batch_size, &|x| backdoor.attack.apply(x))?;
    let targets: Vec<f32> = backdoor.target.iter().copied().cycle().take(outputs.len()).collect();
    Ok(crate::metrics::BackdoorErrors {
        attack_error: task_error(task, &outputs, &targets),
        poisoned_true_error: task_error(task, &outputs, &data.labels),
        by_distance: crate::metrics::attack_error_by_distance(task, &outputs, &data.labels, &backdoor.target),
    })
}
