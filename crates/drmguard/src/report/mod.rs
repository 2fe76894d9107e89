//! Pictures and summaries for people.
pub mod grid;
pub mod reversed;
pub mod scan;
pub mod triggers;
