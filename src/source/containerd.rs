//! `containerd:`: containerd's root (k3s, kim, nerdctl, crictl, Docker's containerd
//! image store). Where meta.db's image records are read.
//!
//! `io.containerd.metadata.v1.bolt/meta.db` is read without a lock (a running
//! containerd holds it) by `crate::bbolt`. Records are
//! `v1/<namespace>/images/<name>/target/{digest,mediatype,size}`; a target resolves
//! through the content store (`io.containerd.content.v1.content/blobs/`) from index to
//! the host platform's manifest to its config, whose digest is the ID, as CRI reports
//! it. Names that are IDs (`sha256:…`, CRI's records), digest references and
//! `moby-dangling@…` are not tags. Each namespace is its own store.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::oci::{self, Descriptor, LayoutBlobs};
use super::{
    BlobLocation, ChangeToken, ImageRecord, Inventory, Source, SourceError, SourceKind, StoreMeta,
    pread_clamped, read_whole,
};
use crate::bbolt::{BoltFile, Item};
use crate::reference::{self, Parsed};

pub struct Containerd {
    root: PathBuf,
    namespace: String,
    db: BoltFile,
    content: PathBuf,
    meta: StoreMeta,
}

const META_DB: &str = "io.containerd.metadata.v1.bolt/meta.db";
const CONTENT: &str = "io.containerd.content.v1.content";

/// Splits `ROOT#namespace`.
pub fn split_namespace(path: &str) -> (&str, Option<&str>) {
    match path.rsplit_once('#') {
        Some((root, ns)) if !ns.is_empty() && !ns.contains('/') => (root, Some(ns)),
        _ => (path, None),
    }
}

/// The namespaces meta.db has image records in.
pub fn namespaces(root: &Path) -> Result<Vec<String>, SourceError> {
    let db_path = root.join(META_DB);
    let db = BoltFile::open(&db_path).map_err(|e| SourceError::new(db_path.display(), e))?;
    db.read(|tx| {
        let Some(v1) = tx.bucket(&tx.root(), b"v1")? else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for (name, item) in tx.items(&v1)? {
            if let Item::Bucket(ns) = item
                && tx.bucket(&ns, b"images")?.is_some()
            {
                out.push(String::from_utf8_lossy(&name).into_owned());
            }
        }
        Ok(out)
    })
    .map_err(|e| SourceError::new(db_path.display(), e))
}

impl Containerd {
    pub fn open(root: &Path, namespace: &str) -> Result<Containerd, SourceError> {
        let db_path = root.join(META_DB);
        let db = BoltFile::open(&db_path).map_err(|e| SourceError::new(db_path.display(), e))?;
        let meta =
            std::fs::metadata(&db_path).map_err(|e| SourceError::new(db_path.display(), e))?;
        Ok(Containerd {
            root: root.to_path_buf(),
            namespace: namespace.to_string(),
            db,
            content: root.join(CONTENT),
            meta: StoreMeta::of(&meta),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// (name, target descriptor) of every image record of the namespace.
    fn records(&self) -> Result<Vec<(String, Descriptor)>, SourceError> {
        let db_path = self.root.join(META_DB);
        self.db
            .read(|tx| {
                let mut out = Vec::new();
                let Some(v1) = tx.bucket(&tx.root(), b"v1")? else {
                    return Ok(out);
                };
                let Some(ns) = tx.bucket(&v1, self.namespace.as_bytes())? else {
                    return Ok(out);
                };
                let Some(images) = tx.bucket(&ns, b"images")? else {
                    return Ok(out);
                };
                for (name, item) in tx.items(&images)? {
                    let Item::Bucket(image) = item else { continue };
                    let Some(target) = tx.bucket(&image, b"target")? else {
                        continue;
                    };
                    let text = |b: Option<Vec<u8>>| {
                        b.map(|v| String::from_utf8_lossy(&v).into_owned())
                            .unwrap_or_default()
                    };
                    let desc = Descriptor {
                        digest: text(tx.get(&target, b"digest")?),
                        media_type: text(tx.get(&target, b"mediatype")?),
                        size: tx
                            .get(&target, b"size")?
                            .and_then(|v| crate::bbolt::varint(&v))
                            .unwrap_or(-1),
                        annotations: None,
                        platform: None,
                    };
                    out.push((String::from_utf8_lossy(&name).into_owned(), desc));
                }
                Ok(out)
            })
            .map_err(|e| SourceError::new(db_path.display(), e))
    }
}

/// The content store seen as an OCI layout (blobs only), for the index walk.
impl LayoutBlobs for Containerd {
    fn read_file(&self, rel: &str, _limit: u64) -> Result<Vec<u8>, String> {
        Err(format!(
            "{}: containerd keeps no {rel}",
            self.content.display()
        ))
    }

    fn blob(&self, digest: &str) -> Result<Option<BlobLocation>, String> {
        let rel =
            oci::blob_rel_path(digest).ok_or_else(|| format!("malformed digest {digest:?}"))?;
        let path = self.content.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(BlobLocation::File {
                path,
                size: m.len(),
            })),
            Ok(_) => Err(format!("{}: not a regular file", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn read_location(&self, loc: &BlobLocation, limit: u64) -> Result<Vec<u8>, String> {
        read_whole(loc.size(), limit, |off, buf| self.read_at(loc, off, buf))
            .map_err(|e| e.to_string())
    }

    fn display(&self, rel: &str) -> String {
        self.content.join(rel).display().to_string()
    }

    fn bare_tag_repository(&self) -> String {
        "localhost/image".into()
    }
}

impl Source for Containerd {
    fn kind(&self) -> SourceKind {
        SourceKind::Containerd
    }

    fn path(&self) -> &Path {
        &self.root
    }

    fn describe(&self) -> String {
        format!("containerd:{}#{}", self.root.display(), self.namespace)
    }

    fn scan(&self) -> Result<Inventory, SourceError> {
        let mut inv = Inventory::default();
        for (name, desc) in self.records()? {
            let what = format!("{} image {name}", self.describe());
            let (mut record, problems) = oci::resolve_record(self, &desc, &what);
            inv.problems.extend(problems);
            if record.is_none() {
                // manifest or config missing: the name dangles at what it names
                record = Some(ImageRecord {
                    claimed_id: desc.digest.clone(),
                    config: None,
                    config_name: what.clone(),
                    ..Default::default()
                });
            }
            let Some(mut record) = record else { continue };
            if name.starts_with("moby-dangling@") {
                // Docker's placeholder for an untagged image: the image, no name
            } else {
                match reference::parse(&name) {
                    Ok(Parsed::Tag(t)) => record.tags.push(t),
                    Ok(Parsed::Digest { name, digest }) => {
                        record.digest_refs.push(format!("{name}@{digest}"))
                    }
                    Ok(Parsed::Id(_)) => {}
                    Err(e) => inv
                        .problems
                        .push(format!("{what}: {e}: not shown as a tag")),
                }
            }
            inv.images.push(record);
        }
        Ok(inv)
    }

    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        match blob {
            BlobLocation::File { path, size } => {
                pread_clamped(&File::open(path)?, 0, *size, offset, buf)
            }
            BlobLocation::Member { .. } => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no tar members here",
            )),
        }
    }

    /// meta.db's transaction id: every committed change moves it.
    fn change_token(&self) -> io::Result<ChangeToken> {
        self.db
            .meta()
            .map(|m| ChangeToken(m.txid.to_string()))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn meta(&self) -> StoreMeta {
        self.meta
    }
}
