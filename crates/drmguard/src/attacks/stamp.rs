//! x' = (1 − m) ⊙ x + m ⊙ p: the input-independent triggers (BadNets' patch, Blended's pattern).

use burn::tensor::{Tensor, TensorData};

/// A mask `m` (`[S, S]`, values in [0, 1]) and a pattern `p` (`[3, S, S]`, values in [0, 1]).
#[derive(Debug, Clone)]
pub struct Stamp {
    pub size: usize,
    pub mask: Vec<f32>,
    pub pattern: Vec<f32>,
}

impl Stamp {
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        let s = self.size;
        let mask = Tensor::<4>::from_data(TensorData::new(self.mask.clone(), [1, 1, s, s]), &device);
        let pattern = Tensor::<4>::from_data(TensorData::new(self.pattern.clone(), [1, 3, s, s]), &device);
        x * (mask.clone().neg() + 1.0) + pattern * mask
    }
}
