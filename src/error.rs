//! Typed errors of the `lors` library.

use std::path::{Path, PathBuf};

use candle_core::DType;

/// Every error the library returns. The binary wraps these with context (anyhow).
#[derive(Debug, thiserror::Error)]
pub enum LorsError {
    /// A tensor does not have the shape an operation needs.
    #[error("{what}: expected shape {expected}, got {got}")]
    Shape {
        what: String,
        expected: String,
        got: String,
    },
    /// The adapter rank does not fit the layer.
    #[error("invalid rank {rank} for {what} ({out_features}x{in_features}): rank must be between 1 and {max}")]
    Rank {
        what: String,
        rank: usize,
        out_features: usize,
        in_features: usize,
        max: usize,
    },
    /// A setting has a value outside its domain.
    #[error("invalid value for `{field}`: {reason}")]
    InvalidValue { field: String, reason: String },
    /// A merge (or another step) would change which weights are zero.
    #[error("sparsity violated in {what}: {detail}")]
    SparsityViolation { what: String, detail: String },
    /// The operation does not support this dtype on this device.
    #[error("dtype {dtype:?} is not supported for {what}")]
    UnsupportedDType { dtype: DType, what: String },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file's content is malformed (the detail names the field or tensor).
    #[error("{}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    /// One record of a data file is bad.
    #[error("{}, line {line}: {detail}", path.display())]
    Record {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    /// Training diverged (NaN or infinite loss or gradient norm); `kept` says which step's
    /// parameters were checkpointed instead.
    #[error("training diverged at step {step}: {what}; {kept}")]
    Diverged {
        step: usize,
        what: String,
        kept: String,
    },
    /// An output would replace or delete something the user did not ask to lose.
    #[error("{}: {detail}", path.display())]
    OutputRefused { path: PathBuf, detail: String },
    /// A run's profile was edited since its checkpoint was written.
    #[error("{}: changed since the checkpoint was written ({keys}); undo the change, or resume with --accept-profile-change", path.display())]
    ProfileChanged { path: PathBuf, keys: String },
    /// Another process owns the run directory.
    #[error("{}: {detail}", path.display())]
    Locked { path: PathBuf, detail: String },
    /// An error from the tokenizer.
    #[error("tokenizer {}: {detail}", path.display())]
    Tokenizer { path: PathBuf, detail: String },
    /// A Hugging Face Hub repo or file could not be resolved (the detail says what is
    /// missing and how to provide it).
    #[error("hub {repo}: {detail}")]
    Hub { repo: String, detail: String },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl LorsError {
    /// Shorthand for [`LorsError::InvalidValue`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidValue {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`LorsError::Io`].
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Shorthand for [`LorsError::Parse`].
    pub fn parse(path: &Path, detail: impl Into<String>) -> Self {
        Self::Parse {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    /// Shorthand for [`LorsError::Shape`].
    pub fn shape(what: impl Into<String>, expected: impl ToString, got: impl ToString) -> Self {
        Self::Shape {
            what: what.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}

/// Run a third-party parser over the file at `path`, turning a panic on malformed input
/// (the parquet reader has such paths) into an error naming the file.
pub fn catch_parser_panic<T>(
    path: &Path,
    what: &str,
    parse: impl FnOnce() -> Result<T>,
) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(LorsError::parse(
            path,
            format!("the {what} reader failed on this file (is it damaged?): {message}"),
        ))
    })
}

/// Result type of the library.
pub type Result<T> = std::result::Result<T, LorsError>;
