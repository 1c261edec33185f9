//! `registry:`: an OCI distribution registry. Not read by this version: recognised,
//! so that `registry:host/repo` is never taken for a path, and refused with a message.

use super::{Kind, Opened, SourceOptions, StoreError};

pub static KIND: Kind = Kind {
    prefix: "registry",
    about: "an OCI distribution registry (recognised, not read yet)",
    is_dir_store: None,
    archive: None,
    open,
};

fn open(spec: &str, _: &SourceOptions) -> Result<Vec<Opened>, StoreError> {
    Err(StoreError::unsupported(format!(
        "registry:{spec}: sources of this kind are not supported by this version of imagefs yet"
    )))
}
