//! Plain-loop CPU references in f64. They are the most obvious code possible: every GPU result is
//! checked against them, and users can call them to check their own ports.
pub mod attention;
pub mod quant;
pub mod rms_norm;
pub mod rope;
