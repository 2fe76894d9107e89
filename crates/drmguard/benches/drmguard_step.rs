//! DRMGuard reverse-engineering step time (batch 50, 64×64) on the default CPU backend, for the
//! suspect ResNet-18 at width 64 and 16, with the default generator, and with parts switched off
//! to show where the time goes (MTR's extra input-gradient pass; the generator's own size).
//!
//! Run: `cargo bench -p drmguard --bench drmguard_step` (DRMGUARD_BENCH_STEPS sets the number of
//! timed steps, default 5).

use burn::tensor::Device;
use drmguard::data::DataSource;
use drmguard::defenses::drmguard::{DrmGuardConfig, Mtr};
use drmguard::defenses::generator::GeneratorKind;
use drmguard::defenses::{CleanSet, DrmGuard, Suspect};
use drmguard::models::{Architecture, ModelSpec, Normalization};
use drmguard::task::Task;

fn main() {
    let steps: usize = std::env::var("DRMGUARD_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let size = 64;
    let device = Device::flex();
    println!(
        "DRMGuard step, batch 50, {size}×{size}, flex CPU backend, {} threads, {steps} steps each (after 1 warm-up step)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let base = DrmGuardConfig { steps, ..DrmGuardConfig::default() };
    let cases: Vec<(usize, &str, DrmGuardConfig)> = vec![
        (64, "default (U-Net w16, MTR loss)", base.clone()),
        (16, "default (U-Net w16, MTR loss)", base.clone()),
        (16, "MTR off", DrmGuardConfig { mtr: Mtr::Off, ..base.clone() }),
        (16, "U-Net w32", DrmGuardConfig { generator_width: 32, ..base.clone() }),
        (16, "encoder-decoder w32 (SecureGaze)", DrmGuardConfig { generator: GeneratorKind::EncoderDecoder, generator_width: 32, ..base.clone() }),
    ];
    let source = DataSource::Synthetic { task: Task::Gaze, n: 10_000, seed: 0, image_size: size };
    for (width, label, config) in cases {
        let spec = ModelSpec {
            architecture: Architecture::Resnet18 { width },
            input_size: size,
            input_range: [0.0, 1.0],
            normalization: Normalization::imagenet(),
            outputs: 2,
        };
        let model = spec.init(&device, 0).expect("a valid spec");
        let suspect = Suspect::from_parts(model, Task::Gaze, spec, source.clone(), 10_000);
        let clean = CleanSet::fresh_builtin(&suspect, 100).expect("built-in data");
        // One step first, so that allocation and kernel set-up are not timed.
        DrmGuard::new(DrmGuardConfig { steps: 1, ..config.clone() }).reverse(&suspect, &clean, &device).expect("a step");
        let reversal = DrmGuard::new(config).reverse(&suspect, &clean, &device).expect("reverse engineering");
        println!("ResNet-18 width {width:>2}, {label:<34}: {:7.1} ms/step", reversal.summary.seconds_per_step * 1e3);
    }
}
