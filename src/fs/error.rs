//! What the core answers when an operation fails: the errno the caller sees and the
//! reason, which the adapter logs once with the operation and the inode. Every errno
//! a store's error becomes is chosen here, and only here.

use std::fmt;

use crate::source::StoreError;

/// An errno value, as the core answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
}

/// A failed operation. Equal to another when the caller would see the same errno
/// (what tests compare); the message is for the log, and for tests that ask why.
#[derive(Clone, Debug)]
pub struct Error {
    pub errno: Errno,
    /// Why, naming the store and the file. Empty for the answers a filesystem gives
    /// all day (no such name, not a directory), which are not worth a log line.
    pub message: String,
    /// A refusal the user asked for (`-o ro`) rather than a failure: logged quietly.
    pub expected: bool,
}

pub type FsResult<T> = Result<T, Error>;

impl Error {
    pub fn new(errno: Errno, message: impl fmt::Display) -> Error {
        Error {
            errno,
            message: message.to_string(),
            expected: false,
        }
    }

    /// A refusal, not a failure (see [`Error::expected`]).
    pub fn refused(errno: Errno, message: impl fmt::Display) -> Error {
        Error {
            expected: true,
            ..Error::new(errno, message)
        }
    }

    /// The same error, its message prefixed with what was being done.
    pub fn context(self, what: impl fmt::Display) -> Error {
        let message = if self.message.is_empty() {
            what.to_string()
        } else {
            format!("{what}: {}", self.message)
        };
        Error { message, ..self }
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        self.errno == other.errno
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "errno {}", self.errno.0)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl From<Errno> for Error {
    fn from(errno: Errno) -> Error {
        Error {
            errno,
            message: String::new(),
            expected: true,
        }
    }
}

/// A store's error as the caller sees it. Only what the store cannot do is EROFS; a
/// file of the store that cannot be read, or is not what its format says, is EIO
/// (or the OS's own errno), as a disk error is on any filesystem.
impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        let errno = match &e {
            StoreError::Io { source, .. } => source.raw_os_error().map_or(Errno::EIO, Errno),
            StoreError::Format { .. } => Errno::EIO,
            StoreError::Unsupported(_) => Errno::EROFS,
            StoreError::NotPermitted(_) => Errno::EPERM,
            StoreError::Busy(_) => Errno::EBUSY,
            StoreError::NotFound(_) => Errno::ENOENT,
        };
        Error::new(errno, e)
    }
}

/// A config could not be read from its store.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::new(Errno::EIO, e)
    }
}
