//! Killed runs and repeated runs. A run killed with SIGKILL at any point leaves, at each final
//! path, nothing or the complete file; the same command run again finishes and writes what an
//! uninterrupted run writes; two runs of one command and seed write the same bytes, apart from
//! the wall times in each JSON file's `timing` section.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drmguard::io::timing;

/// Where in a run to kill it.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// After this share of an uninterrupted run's wall time.
    Share(f64),
    /// As soon as this many files have appeared in the run's folder, its cache included.
    Files(usize),
}

fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drmguard"));
    // Each run has its own cache, so that a killed run and its rerun do the work again (the
    // bench's models) instead of finding it done; relative, so that the paths the outputs name
    // are the same in every run's folder.
    c.current_dir(dir).args(args).env("DRMGUARD_CACHE", "cache");
    c
}

fn run(dir: &Path, args: &[&str]) -> Duration {
    let started = Instant::now();
    let o = command(dir, args).output().expect("the binary runs");
    assert!(o.status.success(), "{args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&o.stderr));
    started.elapsed()
}

/// Files below `dir`, scratch files left out, and the run's cache too unless `with_cache`; paths
/// relative to `dir`. A folder that is not there yet has none.
fn files(dir: &Path, with_cache: bool) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, with_cache: bool, found: &mut Vec<PathBuf>) {
        for path in std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()) {
            let name = path.file_name().unwrap().to_string_lossy();
            if is_scratch(&name) || (!with_cache && dir == root && name == "cache") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, with_cache, found);
            } else {
                found.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, dir, with_cache, &mut found);
    found
}

fn file_count(dir: &Path) -> usize {
    files(dir, true).len()
}

/// Starts `args` in `dir` and kills it with SIGKILL at `at` (`took`: an uninterrupted run's
/// time); false if it ended first.
fn run_and_kill(dir: &Path, args: &[&str], at: KillAt, took: Duration) -> bool {
    let before = file_count(dir);
    let mut child = command(dir, args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("the binary starts");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("the child can be polled").is_some() {
            return false;
        }
        let due = match at {
            KillAt::Share(share) => started.elapsed() >= took.mul_f64(share),
            KillAt::Files(n) => file_count(dir) >= before + n,
        };
        if due {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL is delivered");
    !child.wait().expect("the killed child is reaped").success()
}

/// A file's content as the comparison sees it: JSON without its wall times; Markdown with its
/// numbers masked (it renders the JSON's numbers for people, wall times among them); anything
/// else as bytes.
#[derive(Debug, PartialEq)]
enum Content {
    Json(serde_json::Value),
    Markdown(String),
    Bytes(Vec<u8>),
}

fn mask_numbers(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        let numeric = c.is_ascii_digit() || (in_number && c == '.');
        if !numeric {
            masked.push(c);
        } else if !in_number {
            masked.push('#');
        }
        in_number = numeric;
    }
    masked
}

/// A scratch file of an atomic write that a kill stranded: never at a final path.
fn is_scratch(name: &str) -> bool {
    name.starts_with(".tmp") || name.ends_with(".tmp")
}

/// Every output file below `dir` (the run's cache and scratch files left out), by relative path.
fn outputs(dir: &Path) -> BTreeMap<PathBuf, Content> {
    files(dir, false)
        .into_iter()
        .map(|relative| {
            let path = dir.join(&relative);
            let bytes = std::fs::read(&path).unwrap();
            let name = relative.to_string_lossy();
            let content = if name.ends_with(".json") {
                let mut value: serde_json::Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{} is not complete JSON ({e})", path.display()));
                timing::separate(&mut value);
                Content::Json(timing::without(&value))
            } else if name.ends_with(".md") {
                Content::Markdown(mask_numbers(&String::from_utf8(bytes).unwrap()))
            } else {
                Content::Bytes(bytes)
            };
            (relative, content)
        })
        .collect()
}

/// Where two sets of outputs first differ, for a readable failure: the file, and in JSON the
/// first differing field.
fn difference(got: &BTreeMap<PathBuf, Content>, want: &BTreeMap<PathBuf, Content>) -> Option<String> {
    fn json(a: &serde_json::Value, b: &serde_json::Value, at: String) -> Option<String> {
        use serde_json::Value::{Array, Object};
        match (a, b) {
            (Object(x), Object(y)) => x.keys().chain(y.keys()).find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => json(p, q, format!("{at}/{k}")),
                _ => Some(format!("{at}/{k} is in one file only")),
            }),
            (Array(x), Array(y)) if x.len() == y.len() => x.iter().zip(y).enumerate().find_map(|(i, (p, q))| json(p, q, format!("{at}/{i}"))),
            _ => (a != b).then(|| format!("{at}: {a} against {b}")),
        }
    }
    let names = |m: &BTreeMap<PathBuf, Content>| m.keys().cloned().collect::<Vec<_>>();
    if names(got) != names(want) {
        return Some(format!("files {:?} against {:?}", names(got), names(want)));
    }
    got.iter().zip(want.values()).find_map(|((path, a), b)| match (a, b) {
        (Content::Json(x), Content::Json(y)) => json(x, y, String::new()).map(|d| format!("{}: {d}", path.display())),
        _ => (a != b).then(|| format!("{} differs", path.display())),
    })
}

/// Runs `args` uninterrupted in a fresh folder prepared by `setup`, then twice more: the outputs
/// of the two uninterrupted runs must be equal; then, for each kill point, once killed (whatever
/// it left at a final path must be what the uninterrupted run wrote there) and again to the end
/// (everything must be what the uninterrupted run wrote).
fn check_kill_and_rerun(root: &Path, name: &str, args: &[&str], setup: impl Fn(&Path)) {
    let fresh = |label: &str| {
        let dir = root.join(format!("{name}-{label}"));
        std::fs::create_dir_all(&dir).unwrap();
        setup(&dir);
        dir
    };
    let reference_dir = fresh("reference");
    let inputs = outputs(&reference_dir);
    let files_before = file_count(&reference_dir);
    let took = run(&reference_dir, args);
    let files_written = file_count(&reference_dir) - files_before;
    let reference = outputs(&reference_dir);
    assert!(reference.len() > inputs.len(), "{name} wrote nothing");

    let again = fresh("again");
    // The quicker of the two runs times the kills, so that a slow first run (a cold page cache)
    // does not push them past the end.
    let took = took.min(run(&again, args));
    let repeated = difference(&outputs(&again), &reference);
    assert!(repeated.is_none(), "{name}: a second run of the same command and seed writes other outputs: {repeated:?}");

    // Early in the run, a third of the way, after its first file and halfway through its files.
    let kill_points = [KillAt::Share(0.1), KillAt::Share(0.35), KillAt::Files(1), KillAt::Files(files_written.div_ceil(2))];
    let mut killed = 0;
    for (i, at) in kill_points.into_iter().enumerate() {
        let dir = fresh(&format!("killed-{i}"));
        killed += usize::from(run_and_kill(&dir, args, at, took));
        for (path, content) in outputs(&dir) {
            assert!(
                reference.get(&path) == Some(&content),
                "{name} killed at {at:?} left {} incomplete or different",
                path.display()
            );
        }
        run(&dir, args);
        let rerun = difference(&outputs(&dir), &reference);
        assert!(rerun.is_none(), "{name}: the rerun after a kill at {at:?} writes other outputs: {rerun:?}");
    }
    // A kill comes too late where the run writes its files at its very end, or where this run
    // went faster than the timed ones; one at least must have cut a run short.
    assert!(killed >= 1, "{name} ended before each of its {} kills", kill_points.len());
}

/// Trains the smoke model that the scan and the mitigation read, in `dir`.
fn trained_model(dir: &Path) -> impl Fn(&Path) + use<> {
    std::fs::create_dir_all(dir).unwrap();
    run(dir, &["train", "--task", "gaze", "--profile", "smoke", "--epochs", "1", "--out", "m.safetensors"]);
    let dir = dir.to_path_buf();
    move |to: &Path| {
        for file in ["m.safetensors", "m.json"] {
            std::fs::copy(dir.join(file), to.join(file)).unwrap();
        }
    }
}

#[test]
fn a_killed_train_leaves_no_partial_model_and_reruns_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    check_kill_and_rerun(tmp.path(), "train", &["train", "--task", "gaze", "--profile", "smoke", "--epochs", "3", "--out", "m.safetensors"], |_| {});
}

#[test]
fn a_killed_scan_and_a_killed_mitigation_rerun_to_the_same_report_and_model() {
    let tmp = tempfile::tempdir().unwrap();
    // DRMGuard's generator test, made small: every detector's report goes through the same
    // writer (the default verdict trains reference models, minutes in a debug build; the cache
    // entries they go to are written the same way).
    let scan = [
        "scan", "--model", "m.safetensors", "--out", "scan", "--defense", "drmguard", "--drmguard-test", "generator", "--steps",
        "3", "--batch-size", "8", "--clean-size", "16",
    ];
    let model = trained_model(&tmp.path().join("model"));
    check_kill_and_rerun(tmp.path(), "scan", &scan, &model);
    let mitigate = [
        "mitigate", "--model", "m.safetensors", "--out", "fixed.safetensors", "--defense", "drmguard", "--drmguard-test",
        "generator", "--steps", "3", "--batch-size", "8", "--clean-size", "16", "--unlearn-epochs", "2", "--unlearn-batch-size", "8",
    ];
    check_kill_and_rerun(tmp.path(), "mitigate", &mitigate, &model);
}

#[test]
fn a_killed_bench_resumes_to_the_same_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = [
        "bench", "--profile", "smoke", "--tasks", "headpose", "--attacks", "badnets", "--detectors", "drmguard", "--mitigators",
        "ft", "--out", "bench",
    ];
    check_kill_and_rerun(tmp.path(), "bench", &bench, |_| {});
}
