//! One module per kernel family.
pub mod rms_norm;
pub mod rope;
