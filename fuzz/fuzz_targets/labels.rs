#![no_main]
//! Fuzz target: `drmguard::untrusted::read(Reader::Labels, input)` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(
    // A panic that a reader catches is still a crash: abort on every panic.
    init: std::panic::set_hook(Box::new(|info| {
        eprintln!("{info}");
        std::process::abort();
    })),
    |data: &[u8]| {
        let _ = drmguard::untrusted::read(drmguard::untrusted::Reader::Labels, data);
    }
);
