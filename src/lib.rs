//! imagefs: container image stores and archives as a filesystem of `by-id/` (image
//! configs named by their digest) and `by-tag/` (hard links to them, or dangling
//! symlinks).
//!
//! Data flows one way: a [`source`] scans its store into an inventory, the
//! [`catalog`] verifies it into images and tags, [`fs`] answers the kernel's questions
//! from the tree of all catalogs, and [`fuse`] only speaks FUSE, with [`notify`] beside it telling the kernel what it
//! did not ask. Dependencies point
//! the same way: source → catalog → fs → fuse, with [`main`](../imagefs/index.html)
//! and [`cli`] above them all (the only readers of the environment), and below them
//! all [`store_file`] (the containment layer every store path goes through, and the one
//! notion of "the same file"), [`kept`] (files kept between mounts), [`limits`],
//! [`reference`], [`tar_index`] and [`bbolt`].

// The surface: what the command (main), the fuzz targets and the documentation
// need. Everything else is the crate's own.
pub mod cli;
pub mod fs;
pub mod fuse;
pub mod fuzzing;
pub mod notify;
pub mod source;

pub use config_cache::ConfigCache;
pub use kept::Kept;
pub use limits::Limits;
pub use reference::TagRef;
pub use store_file::crash_after;

mod bbolt;
mod catalog;
mod config_cache;
mod kept;
mod limits;
mod reference;
mod store_file;
mod tar_index;
pub mod threads;
