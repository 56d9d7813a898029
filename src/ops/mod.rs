//! One module per kernel family.
pub mod copy;
pub mod rms_norm;
