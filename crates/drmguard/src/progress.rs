//! Progress bars for long work (training, scans, the benchmark), all in one style.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `steps` steps labelled `prefix`, with a message and the time left; indicatif hides it
/// when stderr is not a terminal.
pub fn progress_bar(prefix: &str, steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps, {msg}, ETA {eta}")
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}
