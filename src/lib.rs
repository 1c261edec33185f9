//! imagefs: container image stores and archives as a filesystem of `by-id/` (image
//! configs named by their digest) and `by-tag/` (hard links to them, or dangling
//! symlinks).
//!
//! Data flows one way: a [`source`] scans its store into an inventory, the
//! [`catalog`] verifies it into images and tags, [`fs`] answers the kernel's questions
//! from the tree of all catalogs, and [`fuse`] only speaks FUSE. Dependencies point
//! the same way: source → catalog → fs → fuse, with [`main`](../imagefs/index.html)
//! and [`cli`] above them all (the only readers of the environment), and below them
//! all [`store_file`] (the containment layer every store path goes through, and the one
//! notion of "the same file"), [`kept`] (files kept between mounts), [`limits`],
//! [`reference`], [`tar_index`] and [`bbolt`].

pub mod bbolt;
pub mod catalog;
pub mod cli;
pub mod config_cache;
pub mod fs;
pub mod fuse;
pub mod kept;
pub mod limits;
pub mod reference;
pub mod source;
pub mod store_file;
pub mod tar_index;
