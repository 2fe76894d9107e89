//! Replays every fuzz corpus (`fuzz/corpus/<reader>/`) through its reader, so that no input a
//! fuzzer once found, and no seed, can panic again: each must be read or refused with an error,
//! without a panic even where a reader catches one (docs/fuzzing.md).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use drmguard::untrusted::{Reader, read};

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn every_corpus_input_is_read_or_refused_without_a_panic() {
    // The panic hook is global: the other test of this binary must not panic either.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let (mut failures, mut replayed, mut refused) = (Vec::new(), 0, 0);
    for reader in Reader::ALL {
        let dir = root.join(reader.name());
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
        files.sort();
        assert!(!files.is_empty(), "{} has no seed", dir.display());
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            let before = PANICS.load(Ordering::SeqCst);
            match std::panic::catch_unwind(|| read(reader, &bytes)) {
                Ok(outcome) if PANICS.load(Ordering::SeqCst) == before => {
                    // Shown with --nocapture: which seeds a reader takes, and why it refuses the others.
                    println!("{}: {}", file.display(), outcome.as_ref().map_or_else(|e| format!("refused: {e}"), |()| "read".into()));
                    refused += usize::from(outcome.is_err());
                }
                _ => failures.push(format!("{}: {} panicked", reader.name(), file.display())),
            }
            replayed += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The seeds include valid inputs and broken ones: both paths must have run.
    assert!(refused > 0 && refused < replayed, "{refused} of {replayed} inputs refused");
}

#[test]
fn a_labels_file_cannot_name_an_image_outside_its_folder() {
    // An image that the row would reach if it could leave the folder.
    let outside = tempfile::tempdir().unwrap();
    image::RgbImage::new(32, 32).save(outside.path().join("x.png")).unwrap();
    let absolute = format!("file,yaw\n{},0.1\n", outside.path().join("x.png").display());
    for labels in ["file,yaw\n../x.png,0.1\n", "file,yaw\nsub/../../x.png,0.1\n", absolute.as_str()] {
        let e = read(Reader::Labels, labels.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("is not a path inside the folder"), "{labels}: {e}");
    }
    // Subfolders, and `./`, stay inside.
    let e = read(Reader::Labels, b"file,yaw\n./sub/x.png,0.1\n").unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
}
