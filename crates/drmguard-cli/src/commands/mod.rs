pub mod attack_args;
pub mod data;
pub mod eval;
pub mod poison;
pub mod train;
