//! Reading configs: served from the cache or the store, and checked against the
//! image ID at every read from the store.

use std::sync::Arc;

use tracing::debug;

use super::*;
use crate::source::Source;

/// Why a read from the store gave no bytes.
enum ReadFailure {
    /// The config's file changed since it was verified.
    Changed,
    Failed(Error),
}

/// A config whose bytes no longer hash to its ID: never served.
fn changed_under_mount(source: &dyn Source, id: &str, hashed: &str) -> Error {
    Error::new(
        Errno::EIO,
        format!(
            "{}: config of {id} now hashes to {hashed}: the store changed under the mount, not served",
            source.describe()
        ),
    )
}

impl ImageFs {
    /// Checks an open: these files are read-only.
    pub fn open(&self, ino: u64, write: bool) -> FsResult<()> {
        let attr = self.getattr(ino)?;
        if attr.kind == FileKind::Dir && write {
            return Err(Errno::EISDIR.into());
        }
        if write {
            return Err(self.refuse_write());
        }
        Ok(())
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        // Only the location is taken out of the lock: reads of large configs go to
        // the source without holding it.
        let (store, config, id) = {
            let state = self.state.read();
            let node = state.tree.get(ino).ok_or(Errno::ENOENT)?;
            match &node.kind {
                NodeKind::Image { store, index, .. } => {
                    let image = image_at(&state, *store, *index)?;
                    (*store, image.config.clone(), image.id.clone())
                }
                NodeKind::Dir { .. } => return Err(Errno::EISDIR.into()),
                NodeKind::Symlink { .. } => return Err(Errno::EINVAL.into()),
            }
        };
        let total = config.size();
        if offset >= total {
            return Ok(Vec::new());
        }
        let len = (size as u64).min(total - offset) as usize;
        let start = offset as usize;
        let key = (store, config);
        if let Some(bytes) = self.cache.get(&key) {
            return bytes
                .get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or(Errno::EIO.into());
        }
        // A config whose file changed since it was verified is verified again (and
        // read from that file only) before a byte of it is served.
        let located = self.repinned.lock().get(&key).cloned();
        let located = located.unwrap_or_else(|| key.1.clone());
        match self.read_verified(store, &located, &id, offset, len, &key) {
            Err(ReadFailure::Changed) => {
                let fresh = self.reverify(store, &located, &id)?;
                self.repinned.lock().insert(key.clone(), fresh.clone());
                match self.read_verified(store, &fresh, &id, offset, len, &key) {
                    Ok(bytes) => Ok(bytes),
                    Err(ReadFailure::Changed) => Err(Error::new(
                        Errno::EIO,
                        format!(
                            "{}: config of {id} keeps changing under the mount: not served",
                            self.stores[store].source.describe()
                        ),
                    )),
                    Err(ReadFailure::Failed(e)) => Err(e),
                }
            }
            Err(ReadFailure::Failed(e)) => Err(e),
            Ok(bytes) => Ok(bytes),
        }
    }

    /// Reads `len` bytes at `offset` of a config from the store: a small config whole,
    /// hashed and cached (under `key`); a larger one by range from the very file it was
    /// verified in (the location's pin).
    #[allow(clippy::too_many_arguments)]
    fn read_verified(
        &self,
        store: usize,
        config: &crate::source::BlobLocation,
        id: &str,
        offset: u64,
        len: usize,
        key: &crate::config_cache::CacheKey,
    ) -> Result<Vec<u8>, ReadFailure> {
        let source = self.stores[store].source.as_ref();
        let fail = |e: std::io::Error| {
            if crate::source::BlobChanged::is(&e) {
                ReadFailure::Changed
            } else {
                ReadFailure::Failed(self.io_error(store, e))
            }
        };
        let start = offset as usize;
        if config.size() <= crate::catalog::WHOLE_READ_LIMIT {
            let bytes = crate::source::read_blob(source, config, crate::catalog::WHOLE_READ_LIMIT)
                .map_err(fail)?;
            // Checked at every read from the store, not only at scan: the catalog may
            // be one kept by an earlier mount, and the cache may have let it go.
            let hashed = crate::source::sha256_id(&bytes);
            if hashed != id {
                return Err(ReadFailure::Failed(changed_under_mount(
                    source, id, &hashed,
                )));
            }
            let out = bytes
                .get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or(ReadFailure::Failed(Errno::EIO.into()))?;
            self.cache.insert(key.clone(), Arc::from(bytes));
            return Ok(out);
        }
        self.cache.note_too_big();
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = source
                .read_at(config, offset + done as u64, &mut buf[done..])
                .map_err(fail)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// The config's location as its file is now, once that file's bytes hash to the
    /// image ID again (streamed: a config of any size).
    fn reverify(
        &self,
        store: usize,
        config: &crate::source::BlobLocation,
        id: &str,
    ) -> FsResult<crate::source::BlobLocation> {
        let source = self.stores[store].source.as_ref();
        let fresh = source.repin(config).map_err(|e| self.io_error(store, e))?;
        let hashed =
            crate::catalog::hash_blob(source, &fresh).map_err(|e| self.io_error(store, e))?;
        if hashed != id {
            return Err(changed_under_mount(source, id, &hashed));
        }
        debug!(store = %source.describe(), "config of {id} changed on disk and verified again");
        Ok(fresh)
    }

    fn io_error(&self, store: usize, e: std::io::Error) -> Error {
        Error::new(
            Errno::EIO,
            format!(
                "{}: cannot read config: {e}",
                self.stores[store].source.describe()
            ),
        )
    }
}
