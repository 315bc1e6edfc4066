//! Typed errors of the training core.

use thiserror::Error;

/// Everything that can go wrong in `autodidact-core`.
///
/// Shapes and values that come from outside (a caller, a checkpoint file, a config) are checked
/// at the API boundary and reported here instead of panicking deep inside a kernel.
#[derive(Debug, Error)]
pub enum CoreError {
    /// A tensor's shape does not match what the operation needs.
    #[error("shape mismatch in {op}: expected {expected}, got {got}")]
    Shape {
        /// The operation that checked the shape.
        op: &'static str,
        /// What it expected, in words (e.g. `[*, 64]`).
        expected: String,
        /// What it got.
        got: String,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// An input value (observation, target, label) is NaN, infinite or out of range.
    #[error("invalid input: {0}")]
    Input(String),
    /// A checkpoint or snapshot file could not be read or written.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file involved.
        path: String,
        /// What is wrong with it, and what to do.
        reason: String,
    },
    /// A size does not fit: a product of dimensions overflows `usize`, exceeds one of the
    /// documented limits in [`crate::limits`], or cannot be allocated. Returned before anything
    /// of that size is allocated, so an absurd size is an error rather than an abort.
    #[error("size too large in {what}: {detail}")]
    TooLarge {
        /// What was being sized (a function, or a config field).
        what: String,
        /// The sizes involved and the limit they break, in words.
        detail: String,
    },
    /// An operating-system IO error while reading or writing a checkpoint.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for the core.
pub type Result<T> = std::result::Result<T, CoreError>;

pub(crate) fn shape_err(op: &'static str, expected: impl Into<String>, got: &[usize]) -> CoreError {
    CoreError::Shape {
        op,
        expected: expected.into(),
        got: format!("{got:?}"),
    }
}

pub(crate) fn too_large(what: impl Into<String>, detail: impl Into<String>) -> CoreError {
    CoreError::TooLarge {
        what: what.into(),
        detail: detail.into(),
    }
}

/// `a · b`, or [`CoreError::TooLarge`] naming `what` if the product overflows `usize`.
pub(crate) fn mul(what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| too_large(what, format!("{a} × {b} overflows usize")))
}
