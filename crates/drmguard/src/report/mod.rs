//! Pictures and summaries for people.
pub mod grid;
pub mod triggers;
pub mod reversed;
