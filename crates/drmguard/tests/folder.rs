//! The user data format: round trip, and a clear error for each kind of bad input.

use std::fs;
use std::path::Path;

use drmguard::Error;
use drmguard::data::{folder, synthesize};
use drmguard::task::Task;

fn write_sample_folder(dir: &Path) {
    let ds = synthesize(Task::Gaze, 6, 16, 0).unwrap();
    folder::write(&ds, dir).unwrap();
}

fn load_err(dir: &Path) -> String {
    let err = folder::load(dir, 16, Some(&Task::Gaze.output_names())).expect_err("loading must fail");
    err.to_string()
}

#[test]
fn a_written_folder_loads_back_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gaze");
    let ds = synthesize(Task::Gaze, 10, 16, 4).unwrap();
    folder::write(&ds, &dir).unwrap();
    let back = folder::load(&dir, 16, Some(&Task::Gaze.output_names())).unwrap();
    assert_eq!(back.names, ds.names);
    assert_eq!(back.labels, ds.labels, "labels round-trip exactly");
    for (a, b) in back.images.iter().zip(&ds.images) {
        assert_eq!(a.as_raw(), b.as_raw(), "PNG is lossless");
    }
    assert_eq!(back.content_hash(), ds.content_hash());
}

#[test]
fn images_of_another_size_are_resized() {
    let tmp = tempfile::tempdir().unwrap();
    write_sample_folder(tmp.path());
    let ds = folder::load(tmp.path(), 32, None).unwrap();
    assert!(ds.images.iter().all(|i| i.dimensions() == (32, 32)));
}

#[test]
fn a_missing_folder_is_named() {
    let msg = load_err(Path::new("/nonexistent/drmguard-data"));
    assert!(msg.contains("/nonexistent/drmguard-data"), "{msg}");
}

#[test]
fn a_missing_labels_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("labels.csv"), "{msg}");
}

fn with_labels(text: &str) -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    write_sample_folder(tmp.path());
    fs::write(tmp.path().join("labels.csv"), text).unwrap();
    let msg = load_err(tmp.path());
    (tmp, msg)
}

#[test]
fn a_missing_image_names_the_line() {
    let (_t, msg) = with_labels("file,pitch,yaw\n000000.png,0.1,0.2\nnope.png,0.1,0.2\n");
    assert!(msg.contains("labels.csv:3") && msg.contains("nope.png"), "{msg}");
}

#[test]
fn a_wrong_column_count_names_the_line() {
    let (_t, msg) = with_labels("file,pitch,yaw\n000000.png,0.1\n");
    assert!(msg.contains("labels.csv:2") && msg.contains("expected 3 columns, found 2"), "{msg}");
}

#[test]
fn a_non_numeric_value_names_line_and_column() {
    let (_t, msg) = with_labels("file,pitch,yaw\n000000.png,0.1,0.2\n000001.png,abc,0.2\n");
    assert!(msg.contains("labels.csv:3") && msg.contains("'abc'") && msg.contains("pitch"), "{msg}");
}

#[test]
fn non_finite_values_are_rejected() {
    let (_t, msg) = with_labels("file,pitch,yaw\n000000.png,NaN,0.2\n");
    assert!(msg.contains("labels.csv:2") && msg.contains("not finite"), "{msg}");
}

#[test]
fn outputs_that_do_not_fit_the_task_are_rejected() {
    let (_t, msg) = with_labels("file,yaw,pitch,roll\n000000.png,0.1,0.2,0.3\n");
    assert!(msg.contains("labels.csv:1") && msg.contains("pitch, yaw"), "{msg}");
}

#[test]
fn a_header_without_file_column_is_rejected() {
    let (_t, msg) = with_labels("image,pitch,yaw\n000000.png,0.1,0.2\n");
    assert!(msg.contains("labels.csv:1") && msg.contains("file"), "{msg}");
}

#[test]
fn an_empty_listing_is_rejected() {
    let (_t, msg) = with_labels("file,pitch,yaw\n");
    assert!(msg.contains("no samples"), "{msg}");
}

#[test]
fn duplicate_rows_are_rejected() {
    let (_t, msg) = with_labels("file,pitch,yaw\n000000.png,0.1,0.2\n000000.png,0.1,0.2\n");
    assert!(msg.contains("labels.csv:3") && msg.contains("twice"), "{msg}");
}

#[test]
fn an_undecodable_image_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_sample_folder(tmp.path());
    fs::write(tmp.path().join("000002.png"), b"not a png at all").unwrap();
    let err = folder::load(tmp.path(), 16, None).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err}");
    assert!(err.to_string().contains("000002.png"), "{err}");
}

#[test]
fn image_sizes_not_divisible_by_8_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    write_sample_folder(tmp.path());
    let err = folder::load(tmp.path(), 30, None).unwrap_err();
    assert!(err.to_string().contains("divisible by 8"), "{err}");
    assert!(synthesize(Task::Gaze, 4, 20, 0).is_err());
}

#[test]
fn writing_into_a_missing_parent_fails_without_output() {
    let ds = synthesize(Task::Gaze, 2, 16, 0).unwrap();
    let err = folder::write(&ds, Path::new("/nonexistent/parent/out")).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}
