//! Statistics of the suspect on the clean set and on edited images, and its gradient saliency.

use burn::tensor::Tensor;

use crate::defenses::{CleanSet, Suspect, scalar, values};
use crate::error::{Error, Result};
use crate::metrics::column_mean_var;
use crate::models::inference::model_device;
use crate::models::{Model, Regressor, feature_angles};

/// The model's gradient saliency: mean over batch and channels of |∂ Σ_j f_j(x) / ∂x|, scaled to
/// a maximum of 1, `[S, S]`. No gradient reaches G.
pub(super) fn saliency(model: &Model, x: Tensor<4>) -> Result<Tensor<2>> {
    let x = x.require_grad();
    let grads = model.forward(x.clone()).sum().backward();
    let g = x
        .grad(&grads)
        .ok_or_else(|| Error::Numerical("no input gradient for the MTR attention map".into()))?;
    let [_, _, h, w] = g.dims();
    let s = g.abs().mean_dim(0).mean_dim(1).reshape([h, w]);
    let max = s.clone().max().reshape([1, 1]);
    Ok(s / (max + 1e-12))
}

/// Statistics of the model on the clean set, or on its reversed images when `generator` is given.
pub(super) struct SetStats {
    /// Mean |G(x) − x| (0 without a generator).
    pub(super) l1: f64,
    pub(super) output_mean: Vec<f64>,
    /// Population standard deviation per output (radians).
    pub(super) output_std: Vec<f64>,
    /// Population variance of the feature angle per output (rad²).
    pub(super) angle_var: Vec<f64>,
    /// Mean absolute error to the true labels per output (label units).
    pub(super) output_mae: Vec<f64>,
    /// Mean and population variance of each penultimate feature.
    pub(super) feature_mean: Vec<f64>,
    pub(super) feature_var: Vec<f64>,
}

/// A classifier's outputs are read as softmax probabilities, as its variance term reads them.
pub(super) fn angle_and_output_stats(suspect: &Suspect, clean: &CleanSet, edit: Option<&dyn Fn(Tensor<4>) -> Tensor<4>>, batch_size: usize) -> Result<SetStats> {
    let model = &suspect.model;
    let device = model_device(model);
    let weight = model.head_weight();
    let indices: Vec<usize> = (0..clean.len()).collect();
    let (mut outputs, mut angle_values, mut labels, mut features) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut l1_sum = 0.0f64;
    for batch in indices.chunks(batch_size.max(1)) {
        let (x, y) = clean.batch(batch, &device);
        labels.extend(values(y)?);
        let input = match edit {
            Some(edit) => {
                let r = edit(x.clone());
                l1_sum += scalar((r.clone() - x).abs().sum());
                r
            }
            None => x,
        };
        let z = model.features(input);
        let y = model.head(z.clone());
        let y = if suspect.task.is_classification() { burn::tensor::activation::softmax(y, 1) } else { y };
        outputs.extend(values(y)?);
        features.extend(values(z.clone())?);
        angle_values.extend(values(feature_angles(z, weight.clone()))?);
    }
    let [d, k] = weight.dims();
    if let Some(bad) = outputs.iter().find(|v| !v.is_finite()) {
        return Err(Error::Numerical(format!("the model produced {bad} on the clean set")));
    }
    let (output_mean, output_var) = column_mean_var(&outputs, d);
    let (_, angle_var) = column_mean_var(&angle_values, d);
    let errors: Vec<f32> = outputs.iter().zip(&labels).map(|(o, l)| (o - l).abs()).collect();
    let (output_mae, _) = column_mean_var(&errors, d);
    let (feature_mean, feature_var) = column_mean_var(&features, k);
    let s = clean.data().image_size as f64;
    Ok(SetStats {
        l1: l1_sum / (clean.len() as f64 * 3.0 * s * s),
        output_mean,
        output_std: output_var.iter().map(|v| v.sqrt()).collect(),
        angle_var,
        output_mae,
        feature_mean,
        feature_var,
    })
}
