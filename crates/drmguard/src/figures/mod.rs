//! Pictures of images for people: labelled sample grids and reversed-trigger figures. They
//! depend on the data alone, so every layer above (defenses, reports) can draw them.
pub mod grid;
pub mod reversed;
