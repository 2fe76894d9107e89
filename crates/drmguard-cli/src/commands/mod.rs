pub mod attack_args;
pub mod data;
pub mod demo;
pub mod eval;
pub mod mitigate;
pub mod poison;
pub mod scan;
pub mod train;
