//! One module per kernel family.
pub mod attention;
pub mod cast;
pub mod kv_cache;
pub mod paged;
pub mod rms_norm;
pub mod rope;
