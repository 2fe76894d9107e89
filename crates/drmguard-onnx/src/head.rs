//! A regressor's linear head read from its graph: the last layer as it stands
//! ([`OnnxModel::linear_head`]), or an affine tail probed on unit vectors
//! ([`OnnxModel::probed_head`]). DRMGuard's feature-angle term needs it.

use burn::tensor::{Tensor, TensorData};
use onnx_ir::Node;

use crate::program::Src;
use crate::{Error, OnnxModel, Result, Value, ops};

/// A regressor's linear head H(z) = z·W + b, read from the graph.
#[derive(Debug, Clone)]
pub struct LinearHead {
    /// Name of the value H reads: the penultimate features.
    pub features: String,
    /// `[in, out]`, burn's layout.
    pub weight: Tensor<2>,
    pub bias: Option<Tensor<1>>,
}

impl OnnxModel {
    /// The linear layer that computes output `output` directly: drmguard's head H, with the
    /// name of its input (the penultimate features). An output computed by anything else (an
    /// activation after the last layer, several heads summed) is refused.
    pub fn linear_head(&self, output: usize) -> Result<LinearHead> {
        let p = &self.program;
        let (name, src) = p.outputs.get(output).ok_or_else(|| Error::Invalid(format!("no output {output}")))?;
        let not_linear = |what: &str| Error::Unsupported(format!("output {name} is computed by {what}, not by a linear layer of the penultimate features"));
        let Src::Slot(slot) = src else { return Err(not_linear("no node")) };
        let step = &p.steps[p.producer[*slot]];
        let param = |i: usize| -> Result<Option<Tensor<1>>> {
            match step.inputs.get(i) {
                Some(Src::Param(k)) => Ok(Some(self.params[*k].val())),
                None | Some(Src::Absent) => Ok(None),
                Some(_) => Err(not_linear("a layer whose weights are computed")),
            }
        };
        let features = step.node.inputs().first().map(|a| a.name.clone()).ok_or_else(|| not_linear("a node without input"))?;
        if !matches!(step.inputs.first(), Some(Src::Slot(_))) {
            return Err(not_linear("a layer of the input image"));
        }
        let shape = |i: usize| match step.inputs.get(i) {
            Some(Src::Param(k)) => p.param_shapes[*k].clone(),
            _ => vec![],
        };
        let (weight, bias) = match &step.node {
            Node::Gemm(g) => {
                let c = &g.config;
                if c.trans_a != 0 {
                    return Err(not_linear("a Gemm with transA"));
                }
                let w_shape = shape(1);
                let w = param(1)?.ok_or_else(|| not_linear("a Gemm without weights"))?;
                let w = Value::F1(w).reshape(&w_shape)?.f2("Gemm weight")?;
                let w = if c.trans_b != 0 { w.transpose() } else { w } * c.alpha;
                (w, param(2)?.map(|b| b * c.beta))
            }
            Node::Linear(l) => {
                let w_shape = shape(1);
                let w = param(1)?.ok_or_else(|| not_linear("a Linear without weights"))?;
                let w = Value::F1(w).reshape(&w_shape)?.f2("Linear weight")?;
                let w = if l.config.transpose_weight { w.transpose() } else { w };
                (w, param(2)?)
            }
            Node::MatMul(_) => {
                let w_shape = shape(1);
                let w = param(1)?.ok_or_else(|| not_linear("a MatMul of two computed values"))?;
                (Value::F1(w).reshape(&w_shape)?.f2("MatMul weight")?, None)
            }
            other => return Err(not_linear(ops::op_name(other))),
        };
        let outputs = weight.dims()[1];
        if let Some(b) = &bias {
            if b.dims()[0] != outputs {
                return Err(not_linear("a layer whose bias is broadcast"));
            }
        }
        Ok(LinearHead { features, weight, bias })
    }

    /// The head from the value `features` (a cut, `[n, k]`) to output `output`, for a graph whose
    /// part after `features` is affine though not one linear layer (a Gemm followed by a scaling
    /// or a bias Add, several linear layers in a row): its weight and bias are read by running
    /// that part on zero and on each unit vector, then checked on `check` (`features` values of
    /// a few images). A part that is not affine is refused, with how far it is off.
    pub fn probed_head(&self, features: &str, output: usize, check: Tensor<2>) -> Result<LinearHead> {
        let p = &self.program;
        let (name, src) = p.outputs.get(output).ok_or_else(|| Error::Invalid(format!("no output {output}")))?;
        let Src::Slot(out_slot) = src else { return Err(Error::Invalid(format!("output {name} is not computed by a node"))) };
        let out_value = p.slot_of.iter().find(|(_, s)| *s == out_slot).map(|(n, _)| n.clone()).expect("every slot has a name");
        let [_, k] = check.dims();
        let device = check.device();
        // Row 0 is zero, row i + 1 the unit vector e_i.
        let mut probe = vec![0.0f32; (k + 1) * k];
        for i in 0..k {
            probe[(i + 1) * k + i] = 1.0;
        }
        let z = Tensor::<2>::from_data(TensorData::new(probe, [k + 1, k]), &device);
        let y = self.resume(features, Value::F2(z), &out_value)?.f2("the head's output")?.detach();
        let d = y.dims()[1];
        let bias = y.clone().slice([0..1, 0..d]).reshape([d]);
        let weight = y.slice([1..k + 1, 0..d]) - bias.clone().reshape([1, d]);
        let direct = self.resume(features, Value::F2(check.clone()), &out_value)?.f2("the head's output")?.detach();
        let affine = check.detach().matmul(weight.clone()) + bias.clone().reshape([1, d]);
        let scale = direct.clone().abs().max().into_scalar::<f32>().max(1.0);
        let off = (direct - affine).abs().max().into_scalar::<f32>();
        if !(off <= 1e-4 * scale) {
            return Err(Error::Unsupported(format!(
                "output {name} is not an affine function of {features}: an affine fit is off by {off:.3e} on image features (scale {scale:.3e})"
            )));
        }
        Ok(LinearHead { features: features.to_string(), weight, bias: Some(bias) })
    }
}
