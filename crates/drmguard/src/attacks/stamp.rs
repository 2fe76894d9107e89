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
    /// Black-and-white checkerboards of 4×4 cells in the squares `(top, left, side)`; the mask
    /// is 1 inside them and 0 elsewhere.
    pub fn checkerboards(size: usize, squares: &[(usize, usize, usize)]) -> Stamp {
        let s = size;
        let mut mask = vec![0.0; s * s];
        let mut pattern = vec![0.0; 3 * s * s];
        for &(top, left, side) in squares {
            let cell = side.div_ceil(4);
            for y in top..top + side {
                for x in left..left + side {
                    mask[y * s + x] = 1.0;
                    let white = ((y - top) / cell + (x - left) / cell) % 2 == 0;
                    for c in 0..3 {
                        pattern[(c * s + y) * s + x] = if white { 1.0 } else { 0.0 };
                    }
                }
            }
        }
        Stamp { size: s, mask, pattern }
    }

    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        let s = self.size;
        let mask = Tensor::<4>::from_data(TensorData::new(self.mask.clone(), [1, 1, s, s]), &device);
        let pattern = Tensor::<4>::from_data(TensorData::new(self.pattern.clone(), [1, 3, s, s]), &device);
        x * (mask.clone().neg() + 1.0) + pattern * mask
    }
}
