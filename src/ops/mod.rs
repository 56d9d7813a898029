//! One module per kernel family.
pub mod cast;
pub mod copy;
pub mod rms_norm;
pub mod rope;
