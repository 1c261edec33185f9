//! Reading blobs, whatever the store: whole (bounded), as a stream, from a store's
//! files (opened beneath its root and pinned), and the digests imagefs computes over
//! them (image IDs, layer chain IDs).

use std::io;

use crate::source::{BlobChanged, BlobLocation, Source, StoreError};
use crate::store_file::{FileId, StoreDir, read_whole};

/// The chain IDs of an image's layers, from its config's `rootfs.diff_ids`: what
/// Docker's layerdb and containerd's snapshots are keyed by. The first is the first
/// diff ID; each next is the digest of "<previous chain ID> <diff ID>".
pub fn chain_ids(diff_ids: &[&str]) -> Vec<String> {
    use sha2::{Digest as _, Sha256};
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.to_string(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}")))
            ),
        };
        out.push(next);
    }
    out
}

/// The diff IDs a config lists (`rootfs.diff_ids`); empty when it is not JSON.
pub fn diff_ids(config: &[u8]) -> Vec<String> {
    serde_json::from_slice::<serde_json::Value>(config)
        .ok()
        .and_then(|v| {
            v.pointer("/rootfs/diff_ids")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// `sha256:<hex>`: the ID (config) or digest (manifest) that names these bytes.
pub fn sha256_id(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Reads a whole blob, refusing ones larger than `limit` (indexes and manifests are
/// small; a huge one is an attack or a corrupt store, not something to buffer).
pub fn read_blob(source: &dyn Source, blob: &BlobLocation, limit: u64) -> io::Result<Vec<u8>> {
    read_whole(blob.size(), limit, |off, buf| {
        source.read_at(blob, off, buf)
    })
}

/// A `Read` over one blob, for streaming hashes and parses of large configs.
pub struct BlobReader<'a> {
    source: &'a dyn Source,
    blob: &'a BlobLocation,
    pos: u64,
}

impl<'a> BlobReader<'a> {
    pub fn new(source: &'a dyn Source, blob: &'a BlobLocation) -> BlobReader<'a> {
        BlobReader {
            source,
            blob,
            pos: 0,
        }
    }
}

impl io::Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.blob.size().saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        let n = self.source.read_at(self.blob, self.pos, &mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob ends after {} of {} bytes", self.pos, self.blob.size()),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// `read_at` for the stores whose blobs are files (layouts, containers-storage,
/// Docker's data root, containerd's content store): the file is opened beneath the
/// store's root at every read, and must be the one the blob was located in.
pub fn read_file_blob(
    dir: &StoreDir,
    blob: &BlobLocation,
    offset: u64,
    buf: &mut [u8],
) -> io::Result<usize> {
    match blob {
        BlobLocation::File { rel, size, pin } => {
            let file = dir.open_read(rel)?;
            if FileId::of_file(&file)? != *pin {
                return Err(BlobChanged::error(dir.display(rel)));
            }
            pread_clamped(&file, 0, *size, offset, buf)
        }
        BlobLocation::Member { .. } | BlobLocation::Digest { .. } => Err(not_a_file(dir, blob)),
    }
}

/// Where the blob file `rel` of a store directory is (links inside the store followed,
/// as [`read_file_blob`] opens it); `None` when there is none, an error when it is no
/// regular file.
pub fn file_blob_at(dir: &StoreDir, rel: &str) -> Result<Option<BlobLocation>, StoreError> {
    let Some(meta) = dir
        .metadata(rel)
        .map_err(|e| StoreError::io(dir.display(rel), e))?
    else {
        return Ok(None);
    };
    if !meta.is_file() {
        return Err(StoreError::format(dir.display(rel), "not a regular file"));
    }
    Ok(Some(BlobLocation::file(rel.to_string(), &meta)))
}

/// How messages name a blob of a store directory.
pub fn location_display(dir: &StoreDir, loc: &BlobLocation) -> String {
    match loc {
        BlobLocation::File { rel, .. } => dir.display(rel),
        BlobLocation::Member { offset, .. } => format!("member at offset {offset}"),
        BlobLocation::Digest { digest, .. } => digest.clone(),
    }
}

/// `repin` for the stores whose blobs are files.
pub fn repin_file_blob(dir: &StoreDir, blob: &BlobLocation) -> io::Result<BlobLocation> {
    match blob {
        BlobLocation::File { rel, .. } => {
            let file = dir.open_read(rel)?;
            Ok(BlobLocation::file(rel.clone(), &file.metadata()?))
        }
        BlobLocation::Member { .. } | BlobLocation::Digest { .. } => Err(not_a_file(dir, blob)),
    }
}

fn not_a_file(dir: &StoreDir, blob: &BlobLocation) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {blob:?} is not a file of this store", dir.display(".")),
    )
}

/// Reads from a file at `offset`, clamped to a blob of `size` bytes.
pub fn pread_clamped(
    file: &std::fs::File,
    start: u64,
    size: u64,
    offset: u64,
    buf: &mut [u8],
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    if offset >= size {
        return Ok(0);
    }
    let want = buf
        .len()
        .min((size - offset).min(usize::MAX as u64) as usize);
    // offsets come from indexes a store (or a kept file) gave: never trusted to add up
    let at = start
        .checked_add(offset)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "offset beyond any file"))?;
    file.read_at(&mut buf[..want], at)
}

/// Copies what `bytes` hold at `offset` into `buf`: a read of a blob held in memory (a
/// mem store's, a registry's verified config); a short count only at the end.
pub fn copy_at(bytes: &[u8], offset: u64, buf: &mut [u8]) -> usize {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let n = buf.len().min(bytes.len() - start);
    buf[..n].copy_from_slice(&bytes[start..start + n]);
    n
}
