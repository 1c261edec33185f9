//! Mount tests: imagefs mounted for real, driven with the tools a user would use
//! (`ls`, `stat`, `find`, `sha256sum`, `diff`, `getfattr`, `rm`, `ln`, `mv`), on
//! fixtures that buildah, podman and skopeo make at test time (mount-tests/
//! make-fixtures.sh). What podman and skopeo report for the same images is the truth
//! the mount is compared with.
//!
//! Needs root, /dev/fuse and the tools that `mount-tests/run` installs; without them
//! the first test stops the run with one line saying what is missing (see
//! [`common::prerequisites`]).
//!
//! One test binary, so the fixtures are built once; one module per area, and
//! `common` for what they share (prerequisites, fixtures, mounting, daemons).

mod common;

mod bad_input;
mod benchmark;
mod changes;
mod cli;
mod containerd;
mod containers_storage;
mod docker;
mod formats;
mod kept;
mod mem;
mod reading;
mod registry;
mod trust;
mod writes;
