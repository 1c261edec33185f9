//! What goes wrong in a store, typed by cause, so that the cause reaches the edge: the
//! core maps each kind to its errno in one place (`fs::error`), messages name the file
//! and the problem, and tests can ask which it was.

use std::fmt;
use std::io;

/// A store could not be opened, scanned or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the store's own files failed (or a daemon's answer was
    /// lost): the store is unchanged.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A file of the store is not what its format says.
    #[error("{file}: {problem}")]
    Format { file: String, problem: String },
    /// This kind, or this store, cannot do it (not a store of this kind; a store
    /// imagefs does not write; a daemon store whose daemon is not there).
    #[error("{0}")]
    Unsupported(String),
    /// The store can, but leaves this to its own tools.
    #[error("{0}")]
    NotPermitted(String),
    /// The image is in use (tagged, or held by a container).
    #[error("{0}")]
    Busy(String),
    /// No such store, tag or image.
    #[error("{0}")]
    NotFound(String),
}

impl StoreError {
    pub fn io(context: impl fmt::Display, source: io::Error) -> StoreError {
        StoreError::Io {
            context: context.to_string(),
            source,
        }
    }

    pub fn format(file: impl fmt::Display, problem: impl fmt::Display) -> StoreError {
        StoreError::Format {
            file: file.to_string(),
            problem: problem.to_string(),
        }
    }

    pub fn unsupported(message: impl fmt::Display) -> StoreError {
        StoreError::Unsupported(message.to_string())
    }

    /// An error that is not the store's (serialising what imagefs built), as I/O:
    /// the write did not happen.
    pub fn internal(context: impl fmt::Display, problem: impl fmt::Display) -> StoreError {
        StoreError::io(context, io::Error::other(problem.to_string()))
    }
}
