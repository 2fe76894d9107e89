//! Reports for people: a scan's files and the attacks' trigger pictures.
pub mod scan;
pub mod triggers;
