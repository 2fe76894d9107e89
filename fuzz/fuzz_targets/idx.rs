#![no_main]
//! Fuzz target: `Reader::Idx` (docs/fuzzing.md).

use drmguard::untrusted::{Reader, abort_on_panic, read};

libfuzzer_sys::fuzz_target!(init: abort_on_panic(), |data: &[u8]| {
    let _ = read(Reader::Idx, data);
});
