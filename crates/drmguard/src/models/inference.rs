//! Running a model over a dataset: its outputs, under an optional edit of the images, and its
//! error on the task.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::{Model, Regressor};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::metrics::{TaskError, task_error};
use crate::task::Task;

/// Runs `model` over all of `data` in batches; returns predictions, row-major `[n, d]`.
pub fn predict(model: &Model, data: &Dataset, batch_size: usize) -> Result<Vec<f32>> {
    predict_transformed(model, data, batch_size, &|x| x)
}

/// Outputs of `model` on `data` after `transform` (e.g. a trigger) is applied to each batch.
pub fn predict_transformed(
    model: &Model,
    data: &Dataset,
    batch_size: usize,
    transform: &dyn Fn(Tensor<4>) -> Tensor<4>,
) -> Result<Vec<f32>> {
    let device = model_device(model);
    let indices: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::with_capacity(data.len() * data.dim());
    for batch in indices.chunks(batch_size.max(1)) {
        let (x, _) = data.batch(batch, &device);
        let values = model
            .forward(transform(x))
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| Error::Numerical(format!("{e:?}")))?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(non_finite_output(data, batch, &values, i));
        }
        out.extend(values);
    }
    Ok(out)
}

/// Names the image and the output where a batch's outputs first stopped being finite.
fn non_finite_output(data: &Dataset, batch: &[usize], values: &[f32], at: usize) -> Error {
    let width = (values.len() / batch.len().max(1)).max(1);
    let (image, column) = (batch[at / width], at % width);
    let output = match data.output_names.get(column) {
        Some(name) if data.output_names.len() == width => format!("'{name}'"),
        _ => format!("{column}"),
    };
    let named = data.names.get(image).map_or_else(String::new, |name| format!(" ('{name}')"));
    Error::Numerical(format!("the model's output {output} on image {image}{named} is {}: its weights or its arithmetic are broken", values[at]))
}

/// The task error of `model` on `data`.
pub fn evaluate(model: &Model, task: Task, data: &Dataset, batch_size: usize) -> Result<TaskError> {
    let predictions = predict(model, data, batch_size)?;
    Ok(task_error(task, &predictions, &data.labels))
}

/// The device `model`'s parameters live on.
pub fn model_device(model: &Model) -> Device {
    model.devices().into_iter().next().unwrap_or_default()
}
