//! One error type for the whole crate. Every variant that can come from a call names the op.

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, tagged with the op that refused or failed.
///
/// Messages read like `rms_norm: weight has 4095 elements, x rows have 4096`, so a user can act on
/// them without reading our source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rank, shape or size rule was broken.
    #[error("{op}: {msg}")]
    Shape {
        /// The op that refused or failed.
        op: &'static str,
        /// What was wrong, with the values involved.
        msg: String,
    },
    /// A dtype is not accepted here, or two tensors disagree on dtype.
    #[error("{op}: {msg}")]
    DType {
        /// The op that refused or failed.
        op: &'static str,
        /// What was wrong, with the values involved.
        msg: String,
    },
    /// A view reaches outside its buffer, or an offset or stride breaks an alignment rule.
    #[error("{op}: {msg}")]
    Bounds {
        /// The op that refused or failed.
        op: &'static str,
        /// What was wrong, with the values involved.
        msg: String,
    },
    /// Two views overlap in a way the kernel cannot honour.
    #[error("{op}: {msg}")]
    Alias {
        /// The op that refused or failed.
        op: &'static str,
        /// What was wrong, with the values involved.
        msg: String,
    },
    /// A scalar parameter is out of range (eps < 0, factor <= 0 ...).
    #[error("{op}: {msg}")]
    Param {
        /// The op that refused or failed.
        op: &'static str,
        /// What was wrong, with the values involved.
        msg: String,
    },
    /// The device cannot run this (a limit is too small, a feature is missing).
    #[error("{op}: {msg}")]
    Limit {
        /// The op that refused or failed.
        op: &'static str,
        /// What was wrong, with the values involved.
        msg: String,
    },
    /// wgpu reported a validation, out-of-memory or internal error while the op ran.
    #[error("{op}: wgpu error: {msg}")]
    Gpu {
        /// The op that refused or failed.
        op: &'static str,
        /// What was wrong, with the values involved.
        msg: String,
    },
    /// The device was lost.
    #[error("{op}: device lost: {msg}")]
    DeviceLost {
        /// The op that refused or failed.
        op: &'static str,
        /// What was wrong, with the values involved.
        msg: String,
    },
    /// No adapter, or the adapter refused to give us a device.
    #[error("context: {0}")]
    NoDevice(String),
    /// A case file (`llama-kernels check`) is malformed or names something we do not know.
    #[error("case {path}: {msg}")]
    Case {
        /// The case file.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        #[source]
        /// The I/O error.
        source: std::io::Error,
    },
}

impl Error {
    /// The op this error is about (`"context"`, `"case"` or `"io"` for the untagged kinds).
    pub fn op(&self) -> &'static str {
        match self {
            Error::Shape { op, .. }
            | Error::DType { op, .. }
            | Error::Bounds { op, .. }
            | Error::Alias { op, .. }
            | Error::Param { op, .. }
            | Error::Limit { op, .. }
            | Error::Gpu { op, .. }
            | Error::DeviceLost { op, .. } => op,
            Error::NoDevice(_) => "context",
            Error::Case { .. } => "case",
            Error::Io { .. } => "io",
        }
    }
}

macro_rules! err_ctor {
    ($($name:ident => $variant:ident),* $(,)?) => {
        impl Error {
            $(
                #[doc = concat!("Build an [`Error::", stringify!($variant), "`].")]
                pub fn $name(op: &'static str, msg: impl Into<String>) -> Self {
                    Error::$variant { op, msg: msg.into() }
                }
            )*
        }
    };
}
err_ctor!(shape => Shape, dtype => DType, bounds => Bounds, alias => Alias, param => Param, limit => Limit, gpu => Gpu);

/// Return `Err(Error::$kind(op, format!(...)))` unless `cond` holds.
#[macro_export]
#[doc(hidden)]
macro_rules! ensure {
    ($cond:expr, $kind:ident, $op:expr, $($fmt:tt)+) => {
        if !($cond) {
            return Err($crate::Error::$kind { op: $op, msg: format!($($fmt)+) });
        }
    };
}
