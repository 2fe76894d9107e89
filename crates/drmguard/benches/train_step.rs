//! Training-step time of ResNet-18 (batch 32, 64×64, L1 loss, Adam) on the default CPU backend,
//! at torchvision's width 64 and at the CPU profile's width 16.
//!
//! Run: `cargo bench -p drmguard --bench train_step`. Environment:
//! - DRMGUARD_BENCH_STEPS: timed steps per width (default 10, after two warm-up steps);
//! - DRMGUARD_TORCH: a Python interpreter with PyTorch. Each width is then also run by the PyTorch
//!   reference `benches/reference/train_step.py` (same sizes, same machine, as many threads), and
//!   the ratio drmguard / PyTorch is printed beside it.

use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use drmguard::models::{Architecture, ModelSpec, Normalization, Regressor};
use reference::reference_ms;

#[path = "reference/run.rs"]
mod reference;

fn main() {
    let steps: usize = std::env::var("DRMGUARD_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let (batch, size) = (32, 64);
    let device = Device::flex().autodiff();
    println!("ResNet-18 training step, batch {batch}, {size}×{size}, flex CPU backend, {} threads", std::thread::available_parallelism().map_or(1, |n| n.get()));
    for width in [64, 16] {
        let reference = torch_ms(width, batch, size, steps);
        let spec = ModelSpec {
            architecture: Architecture::Resnet18 { width },
            input_size: size as u32,
            input_range: [0.0, 1.0],
            channel_order: Default::default(),
            normalization: Normalization::imagenet(),
            outputs: 2,
        };
        let mut model = spec.init(&device, 0).expect("a valid spec");
        let mut optim = AdamConfig::new().init();
        let x = Tensor::<4>::random([batch, 3, size, size], Distribution::Uniform(0.0, 1.0), &device);
        let y = Tensor::<2>::random([batch, 2], Distribution::Uniform(-0.5, 0.5), &device);
        let mut times = Vec::with_capacity(steps);
        for step in 0..steps + 2 {
            let started = Instant::now();
            let loss = (model.forward(x.clone()) - y.clone()).abs().mean();
            let _ = loss.clone().into_scalar::<f32>();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model, grads);
            // Wait for the update to finish before stopping the clock.
            let _ = model.head_weight().sum().into_scalar::<f32>();
            if step >= 2 {
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let torch = reference.map_or(String::new(), |t| format!(", PyTorch median {t:7.1} ms/step, ratio {:.2}", median / t));
        println!("width {width:>2}: median {median:7.1} ms/step, mean {mean:7.1} ms/step over {steps} steps (min {:.1}, max {:.1}){torch}", times[0], times[times.len() - 1]);
    }
}

/// The PyTorch reference's median ms per step at the same sizes, when DRMGUARD_TORCH names a Python
/// with torch. Run before drmguard's own case, so the two never share the cores.
fn torch_ms(width: usize, batch: usize, size: usize, steps: usize) -> Option<f64> {
    let args = [("--width", width), ("--size", size), ("--batch-size", batch), ("--steps", steps)];
    reference_ms("train_step.py", &args.into_iter().flat_map(|(k, v)| [k.to_string(), v.to_string()]).collect::<Vec<_>>())
}
