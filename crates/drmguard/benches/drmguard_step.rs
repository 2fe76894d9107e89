//! DRMGuard reverse-engineering step time (batch 50) for the suspect ResNet-18 at width 64 and 16,
//! with the default generator, and with parts switched off to show where the time goes (MTR's
//! extra input-gradient pass; the generator's own size).
//!
//! Run: `cargo bench -p drmguard --bench drmguard_step`. Environment:
//! - DRMGUARD_BENCH_STEPS: timed steps per case (default 5, after one warm-up step);
//! - DRMGUARD_BENCH_SIZE: the image side (default 64);
//! - DRMGUARD_BENCH_DEVICE: cpu (default, burn's flex backend), or cuda / wgpu when built with
//!   those features;
//! - DRMGUARD_TORCH: a Python interpreter with PyTorch. Each case is then also run by the PyTorch
//!   reference `benches/reference/drmguard_step.py` (same sizes, same machine, as many threads)
//!   and the ratio drmguard / PyTorch is printed beside it (DRMGUARD_REFERENCE_DIR: the scripts' folder
//!   where the bench runs outside this checkout).

#[path = "reference/run.rs"]
mod reference;

use drmguard::data::DataSource;
use drmguard::defenses::drmguard::{DrmGuardConfig, Mtr};
use drmguard::defenses::{CleanSet, DrmGuard, Suspect};
use drmguard::device::DeviceKind;
use drmguard::models::generator::GeneratorKind;
use drmguard::models::{Architecture, ModelSpec, Normalization};
use drmguard::task::Task;
use reference::reference_ms;

fn main() {
    let steps: usize = std::env::var("DRMGUARD_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let size: u32 = std::env::var("DRMGUARD_BENCH_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    let kind: DeviceKind = std::env::var("DRMGUARD_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into()).parse().expect("a device name");
    let device = kind.device().expect("the device is available in this build");
    println!(
        "DRMGuard step, batch 50 unless stated, {size}×{size}, device {kind}, {} CPU threads, {steps} steps each (after 1 warm-up step)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // Batch 50 and U-Net width 16 throughout, so that the rows compare with docs/drmguard.md's
    // earlier ones; the defaults (width 8, batch 32) are the last row.
    let base = DrmGuardConfig { steps, batch_size: 50, generator_width: 16, ..DrmGuardConfig::default() };
    let cases: Vec<(usize, &str, DrmGuardConfig)> = vec![
        (64, "U-Net w16, residual, gradient MTR", base.clone()),
        (16, "U-Net w16, residual, gradient MTR", base.clone()),
        (16, "MTR off", DrmGuardConfig { mtr: Mtr::Off, ..base.clone() }),
        (16, "U-Net w32", DrmGuardConfig { generator_width: 32, ..base.clone() }),
        (16, "encoder-decoder w32 (SecureGaze)", DrmGuardConfig { generator: GeneratorKind::EncoderDecoder, generator_width: 32, ..base.clone() }),
        (16, "the defaults (U-Net w8, batch 32)", DrmGuardConfig { steps, ..DrmGuardConfig::default() }),
    ];
    let source = DataSource::Synthetic { task: Task::Gaze, n: 10_000, seed: 0, image_size: size };
    for (width, label, config) in cases {
        let spec = ModelSpec {
            architecture: Architecture::Resnet18 { width },
            input_size: size,
            input_range: [0.0, 1.0],
            channel_order: Default::default(),
            normalization: Normalization::imagenet(),
            outputs: 2,
        };
        let reference = torch_ms(width, &config, size, steps, kind);
        let model = spec.init(&device, 0).expect("a valid spec");
        let suspect = Suspect::from_parts(model, Task::Gaze, spec, source.clone(), 10_000);
        let clean = CleanSet::fresh_builtin(&suspect, 100).expect("built-in data");
        // One step first, so that allocation and kernel set-up are not timed.
        DrmGuard::new(DrmGuardConfig { steps: 1, ..config.clone() }).reverse(&suspect, &clean, 0, &device).expect("a step");
        let reversal = DrmGuard::new(config).reverse(&suspect, &clean, 0, &device).expect("reverse engineering");
        let ms = reversal.summary.seconds_per_step * 1e3;
        match reference {
            Some(torch) => println!("ResNet-18 width {width:>2}, {label:<34}: {ms:7.1} ms/step, PyTorch {torch:7.1} ms/step, ratio {:.2}", ms / torch),
            None => println!("ResNet-18 width {width:>2}, {label:<34}: {ms:7.1} ms/step"),
        }
    }
}

/// The PyTorch reference's ms per step for the same case, when DRMGUARD_TORCH names a Python with
/// torch. Run before drmguard's own case, so the two never share the cores.
fn torch_ms(width: usize, config: &DrmGuardConfig, size: u32, steps: usize, kind: DeviceKind) -> Option<f64> {
    let args = [
        ("--width", width.to_string()),
        ("--generator", config.generator.to_string()),
        ("--generator-width", config.generator_width.to_string()),
        ("--mtr", if config.mtr == Mtr::Off { "off" } else { "loss" }.into()),
        ("--size", size.to_string()),
        ("--batch-size", config.batch_size.to_string()),
        ("--clean", "100".into()),
        ("--steps", steps.to_string()),
        // On a GPU, drmguard's cuda or wgpu backend is compared with PyTorch's CUDA.
        ("--device", if kind == DeviceKind::Cpu { "cpu" } else { "cuda" }.into()),
    ];
    reference_ms("drmguard_step.py", &args.into_iter().flat_map(|(k, v)| [k.to_string(), v]).collect::<Vec<_>>())
}
