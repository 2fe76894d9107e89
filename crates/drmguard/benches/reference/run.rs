//! Runs a PyTorch reference script of `benches/reference/` and reads its time, for the benches
//! that print drmguard's step beside PyTorch's (`#[path]`-included by each of them).

use std::process::Command;

/// The reference's `ms_per_step` when DRMGUARD_TORCH names a Python with torch, else `None`.
/// `script` is a file name in `benches/reference/`; DRMGUARD_REFERENCE_DIR points elsewhere
/// where the bench runs outside this checkout. The script gets `args` and the thread count.
pub fn reference_ms(script: &str, args: &[String]) -> Option<f64> {
    let python = std::env::var("DRMGUARD_TORCH").ok()?;
    let dir = std::env::var("DRMGUARD_REFERENCE_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/benches/reference").into());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let output = Command::new(&python).arg(format!("{dir}/{script}")).args(args).args(["--threads", &threads.to_string()]).output();
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(o) => panic!("the PyTorch reference {script} failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("cannot run DRMGUARD_TORCH={python}: {e}"),
    };
    let json: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).expect("the reference prints one JSON line");
    json["ms_per_step"].as_f64()
}
