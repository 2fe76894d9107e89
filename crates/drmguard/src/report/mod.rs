//! Pictures and summaries for people.
pub mod grid;
