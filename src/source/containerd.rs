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

use std::io;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use super::containerd_api as images_v1;
use super::containerd_api::images_client::ImagesClient;
use super::containerd_events::ImageEvents;
use super::shared::blob::{chain_ids, diff_ids, read_file_blob, repin_file_blob};
use super::shared::daemon;
use super::shared::oci_walk::{
    Descriptor, LayoutBlobs, Platform, blob_rel_path, host_platform, resolve_record,
};
use super::{
    BlobLocation, ChangeToken, Edit, ImageRecord, Inventory, Kind, Opened, Source, SourceKind,
    SourceOptions, StoreDir, StoreError, StoreMeta, Writer, read_whole,
};
use crate::bbolt::{BoltError, BoltFile, Item};
use crate::limits::Limits;
use crate::reference::{self, Parsed, TagRef};

pub struct Containerd {
    root: PathBuf,
    namespace: String,
    db: BoltFile,
    /// containerd's root: meta.db and the content store are reached through it.
    dir: StoreDir,
    meta: StoreMeta,
    /// containerd's API socket: writes go only there.
    address: PathBuf,
    limits: Limits,
    platform: Platform,
    /// Image events from containerd's API: the change token while subscribed.
    events: Arc<ImageEvents>,
}

/// The socket a root's containerd listens on, unless `-o containerd_address=` says.
pub fn default_address(root: &Path) -> PathBuf {
    if root.to_string_lossy().contains("rancher/k3s") {
        PathBuf::from("/run/k3s/containerd/containerd.sock")
    } else {
        PathBuf::from("/run/containerd/containerd.sock")
    }
}

pub static KIND: Kind = Kind {
    prefix: "containerd",
    about: "containerd's root (/var/lib/containerd; ROOT#NAMESPACE picks a namespace)",
    is_dir_store: Some(|dir| {
        dir.metadata("io.containerd.metadata.v1.bolt")
            .ok()
            .flatten()
            .is_some_and(|m| m.is_dir())
    }),
    archive: None,
    open,
};

/// `ROOT#namespace` is that namespace's store; `ROOT` alone, one store per namespace
/// with image records (namespaces are never merged: each is its own set of names).
fn open(spec: &str, options: &SourceOptions) -> Result<Vec<Opened>, StoreError> {
    let (root, ns) = split_namespace(spec);
    let root = Path::new(root);
    let namespaces = match ns {
        Some(ns) => vec![ns.to_string()],
        None => namespaces(root)?,
    };
    if namespaces.is_empty() {
        return Err(StoreError::NotFound(format!(
            "{}: no namespace with image records",
            root.display()
        )));
    }
    let single = ns.is_some();
    namespaces
        .into_iter()
        .map(|n| {
            let store = Containerd::open(
                root,
                &n,
                options.containerd_address.as_deref(),
                options.limits,
            )?
            .with_platform(options.platform());
            Ok(Opened {
                namespace: (!single).then_some(n),
                source: Box::new(store),
            })
        })
        .collect()
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

/// meta.db, opened beneath containerd's root (never through a link, never a FIFO).
fn open_db(root: &Path) -> Result<(StoreDir, BoltFile), StoreError> {
    let dir =
        StoreDir::open(root, "containerd root").map_err(|e| StoreError::io(root.display(), e))?;
    let file = dir
        .open_own(META_DB, false)
        .map_err(|e| StoreError::io(dir.display(META_DB), e))?;
    Ok((dir, BoltFile::from_file(file)))
}

/// The namespaces meta.db has image records in.
pub fn namespaces(root: &Path) -> Result<Vec<String>, StoreError> {
    let db_path = root.join(META_DB);
    let (_, db) = open_db(root)?;
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
    .map_err(|e| bolt_error(db_path.display(), e))
}

/// meta.db could not be read: its I/O failed, or its pages are not bbolt's.
fn bolt_error(file: impl std::fmt::Display, e: BoltError) -> StoreError {
    match e {
        BoltError::Io(e) => StoreError::io(file, e),
        other => StoreError::format(file, other),
    }
}

impl Containerd {
    pub fn open(
        root: &Path,
        namespace: &str,
        address: Option<&str>,
        limits: Limits,
    ) -> Result<Containerd, StoreError> {
        let (dir, db) = open_db(root)?;
        let meta = dir
            .open_own(META_DB, false)
            .and_then(|f| f.metadata())
            .map_err(|e| StoreError::io(dir.display(META_DB), e))?;
        Ok(Containerd {
            root: root.to_path_buf(),
            namespace: namespace.to_string(),
            db,
            dir,
            meta: StoreMeta::of(&meta),
            address: address
                .map(|a| PathBuf::from(a.strip_prefix("unix://").unwrap_or(a)))
                .unwrap_or_else(|| default_address(root)),
            limits,
            platform: host_platform(),
            events: Arc::new(ImageEvents::default()),
        })
    }

    /// The platform picked from multi-platform indexes (the host's unless said).
    pub fn with_platform(mut self, platform: Platform) -> Containerd {
        self.platform = platform;
        self
    }

    /// Every record with the image ID its target resolves to (None: unresolvable).
    fn resolved(&self) -> Result<Vec<(String, Descriptor, Option<String>)>, StoreError> {
        let records = self
            .records()
            .map_err(|e| StoreError::Unsupported(e.to_string()))?;
        Ok(records
            .into_iter()
            .map(|(name, desc)| {
                let id = resolve_record(self, &desc, &name)
                    .0
                    .ok()
                    .map(|r| r.claimed_id);
                (name, desc, id)
            })
            .collect())
    }

    /// Runs calls on containerd's Images API, in this store's namespace. EROFS when no
    /// containerd answers: meta.db is containerd's alone to write.
    fn with_images<T>(
        &self,
        call: impl AsyncFnOnce(
            &mut ImagesClient<tonic::transport::Channel>,
            &str,
        ) -> Result<T, tonic::Status>,
    ) -> Result<T, StoreError> {
        let refuse = |why: String| {
            StoreError::Unsupported(format!(
                "{}: no containerd answers on {} ({why}): meta.db is written only through containerd's API",
                self.describe(),
                self.address.display()
            ))
        };
        daemon::block_on(async {
            let channel = connect(&self.address)
                .await
                .map_err(|e| refuse(e.to_string()))?;
            let mut client = ImagesClient::new(channel);
            call(&mut client, &self.namespace).await.map_err(|status| {
                let msg = format!(
                    "containerd ({}): {}",
                    self.address.display(),
                    status.message()
                );
                match status.code() {
                    tonic::Code::NotFound => StoreError::NotFound(msg),
                    tonic::Code::FailedPrecondition => StoreError::Busy(msg),
                    tonic::Code::Unavailable => refuse(status.message().to_string()),
                    _ => StoreError::io(msg, io::Error::other(status.code().to_string())),
                }
            })
        })?
    }

    /// Creates or moves the record `name` to `target`.
    fn put_record(&self, name: &str, target: &Descriptor) -> Result<(), StoreError> {
        let image = images_v1::Image {
            name: name.to_string(),
            target: Some(images_v1::Descriptor {
                media_type: target.media_type.clone(),
                digest: target.digest.clone(),
                size: target.size,
                annotations: Default::default(),
            }),
            ..Default::default()
        };
        self.with_images(async |client, ns| {
            let create = images_v1::CreateImageRequest {
                image: Some(image.clone()),
            };
            match client.create(request(create, ns)).await {
                Ok(_) => Ok(()),
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    let update = images_v1::UpdateImageRequest {
                        image: Some(image.clone()),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into()],
                        }),
                    };
                    client.update(request(update, ns)).await.map(|_| ())
                }
                Err(s) => Err(s),
            }
        })
    }

    fn delete_record(&self, name: &str) -> Result<(), StoreError> {
        self.with_images(async |client, ns| {
            let req = images_v1::DeleteImageRequest {
                name: name.to_string(),
                ..Default::default()
            };
            client.delete(request(req, ns)).await.map(|_| ())
        })
    }

    /// A container of the namespace that uses image `id`: one whose image name is one
    /// of the image's records (`names`), or whose snapshot's parent is the image's top
    /// layer (a name moved since the container was made no longer says which image it
    /// was).
    fn container_using(&self, id: &str, names: &[String]) -> Result<Option<String>, StoreError> {
        let top = self.top_chain_id(id);
        let db_err = |e: crate::bbolt::BoltError| {
            StoreError::io(self.dir.display(META_DB), io::Error::other(e.to_string()))
        };
        self.db
            .read(|tx| {
                let text = |b: Option<Vec<u8>>| b.map(|v| String::from_utf8_lossy(&v).into_owned());
                let Some(ns) = self.namespace_bucket(tx)? else {
                    return Ok(None);
                };
                let Some(containers) = tx.bucket(&ns, b"containers")? else {
                    return Ok(None);
                };
                let snapshots = tx.bucket(&ns, b"snapshots")?;
                for (cid, item) in tx.items(&containers)? {
                    let Item::Bucket(c) = item else { continue };
                    let cid = String::from_utf8_lossy(&cid).into_owned();
                    if let Some(image) = text(tx.get(&c, b"image")?)
                        && (names.contains(&image) || image == id)
                    {
                        return Ok(Some(cid));
                    }
                    let (Some(top), Some(snapshots)) = (&top, &snapshots) else {
                        continue;
                    };
                    let (Some(key), Some(snapshotter)) = (
                        text(tx.get(&c, b"snapshotKey")?),
                        text(tx.get(&c, b"snapshotter")?),
                    ) else {
                        continue;
                    };
                    let Some(by_snapshotter) = tx.bucket(snapshots, snapshotter.as_bytes())? else {
                        continue;
                    };
                    let Some(snapshot) = tx.bucket(&by_snapshotter, key.as_bytes())? else {
                        continue;
                    };
                    if text(tx.get(&snapshot, b"parent")?).as_deref() == Some(top.as_str()) {
                        return Ok(Some(cid));
                    }
                }
                Ok(None)
            })
            .map_err(db_err)
    }

    /// `v1/<namespace>`, where the namespace's images, containers and snapshots are.
    fn namespace_bucket(
        &self,
        tx: &crate::bbolt::Tx<'_>,
    ) -> Result<Option<crate::bbolt::Bucket>, crate::bbolt::BoltError> {
        match tx.bucket(&tx.root(), b"v1")? {
            Some(v1) => tx.bucket(&v1, self.namespace.as_bytes()),
            None => Ok(None),
        }
    }

    /// The chain ID of the image's top layer: the parent of a container's snapshot.
    fn top_chain_id(&self, id: &str) -> Option<String> {
        let loc = self.blob(id).ok()??;
        let config = self.read_location(&loc, 16 << 20).ok()?;
        let diffs = diff_ids(&config);
        let diffs: Vec<&str> = diffs.iter().map(String::as_str).collect();
        chain_ids(&diffs).pop()
    }

    /// (name, target descriptor) of every image record of the namespace.
    fn records(&self) -> Result<Vec<(String, Descriptor)>, StoreError> {
        let db_path = self.root.join(META_DB);
        self.db
            .read(|tx| {
                let mut out = Vec::new();
                let Some(ns) = self.namespace_bucket(tx)? else {
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
            .map_err(|e| bolt_error(db_path.display(), e))
    }
}

/// The content store seen as an OCI layout (blobs only), for the index walk.
impl LayoutBlobs for Containerd {
    fn read_file(&self, rel: &str, _limit: u64) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::NotFound(format!(
            "{}: containerd keeps no {rel}",
            self.dir.display(CONTENT)
        )))
    }

    fn blob(&self, digest: &str) -> Result<Option<BlobLocation>, StoreError> {
        let rel = format!(
            "{CONTENT}/{}",
            blob_rel_path(digest).ok_or_else(|| super::oci::malformed_digest(&self.dir, digest))?
        );
        match self.dir.symlink_metadata(&rel) {
            Ok(Some(m)) if m.is_file() => Ok(Some(BlobLocation::file(rel, &m))),
            Ok(Some(_)) => Err(StoreError::format(
                self.dir.display(&rel),
                "not a regular file",
            )),
            Ok(None) => Ok(None),
            Err(e) => Err(StoreError::io(self.dir.display(&rel), e)),
        }
    }

    fn read_location(&self, loc: &BlobLocation, limit: u64) -> Result<Vec<u8>, StoreError> {
        read_whole(loc.size(), limit, |off, buf| self.read_at(loc, off, buf))
            .map_err(|e| StoreError::io(format!("{}: {loc:?}", self.describe()), e))
    }

    fn display(&self, rel: &str) -> String {
        self.dir.display(&format!("{CONTENT}/{rel}"))
    }

    fn bare_tag_repository(&self) -> String {
        "localhost/image".into()
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn platform(&self) -> &Platform {
        &self.platform
    }
}

impl Source for Containerd {
    fn kind(&self) -> SourceKind {
        &KIND
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn describe(&self) -> String {
        format!("{}:{}#{}", KIND.prefix, self.root.display(), self.namespace)
    }

    fn scan(&self) -> Result<Inventory, StoreError> {
        let mut inv = Inventory::default();
        let mut records = self.records()?;
        if records.len() > self.limits.max_images {
            inv.problems
                .push(self.limits.too_many_images(&self.describe(), records.len()));
            records.truncate(self.limits.max_images);
        }
        for (name, desc) in records {
            let what = format!("{} image {name}", self.describe());
            let (record, problems) = resolve_record(self, &desc, &what);
            inv.problems.extend(problems);
            // manifest or index missing: the name dangles at a name saying so
            let mut record = record.unwrap_or_else(|missing| ImageRecord {
                claimed_id: missing,
                config: None,
                config_name: what.clone(),
                ..Default::default()
            });
            if name.starts_with("moby-dangling@") {
                // Docker's placeholder for an untagged image: the image, no name
            } else {
                record.add_name(&name, &what, &mut inv.problems);
            }
            inv.images.push(record);
        }
        Ok(inv)
    }

    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        read_file_blob(&self.dir, blob, offset, buf)
    }

    fn repin(&self, blob: &BlobLocation) -> io::Result<BlobLocation> {
        repin_file_blob(&self.dir, blob)
    }

    /// meta.db's transaction id: every committed change moves it.
    /// The count of image events while containerd's API answers (see
    /// `containerd_events`), else meta.db's txid.
    fn change_token(&self) -> io::Result<ChangeToken> {
        self.events
            .start(self.address.clone(), self.namespace.clone());
        if let Some(t) = self.events.token() {
            return Ok(ChangeToken(t));
        }
        self.db
            .meta()
            .map(|m| ChangeToken(format!("txid:{}", m.txid)))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Every image record of the namespace (name, and its target's digest, media type
    /// and size), hashed, and the content store's blob directory: a record added,
    /// moved or removed changes the first, a blob added or removed (a pull, a
    /// garbage collection) the second. Blobs are named by their digest, and a config
    /// is checked against its ID whenever it is read. Read only at a (re)load: the
    /// commits of a busy node never reach it (see `containerd_events`).
    fn content_key(&self) -> Option<String> {
        use sha2::Digest as _;
        let records = self.records().ok()?;
        let mut h = sha2::Sha256::new();
        for (name, d) in &records {
            for part in [
                name.as_bytes(),
                d.digest.as_bytes(),
                d.media_type.as_bytes(),
            ] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
            h.update(d.size.to_le_bytes());
        }
        Some(format!(
            "{}:{}|{}",
            self.namespace,
            hex::encode(h.finalize()),
            ChangeToken::identities(&self.dir, [&*format!("{CONTENT}/blobs/sha256")])
        ))
    }

    /// Writes go only through containerd's socket: whoever may use it may read and
    /// tag; without containerd, no one may tag (meta.db is containerd's alone).
    fn meta(&self) -> Option<StoreMeta> {
        Some(self.meta.read_only().via_socket(&self.address))
    }

    fn writer(&self) -> Option<&dyn Writer> {
        Some(self)
    }
}

impl Writer for Containerd {
    fn write(&self, edit: Edit<'_>) -> Result<(), StoreError> {
        match edit {
            Edit::Tag { id, tag } => self.tag(id, tag),
            Edit::Untag(tag) => self.untag(tag),
            Edit::Retag { from, to } => self.retag(from, to),
            Edit::Delete(id) => self.delete_image(id),
        }
    }
}

/// The edits, one method each.
impl Containerd {
    fn tag(&self, id: &str, tag: &TagRef) -> Result<(), StoreError> {
        let target = self
            .resolved()?
            .into_iter()
            .find(|(_, _, i)| i.as_deref() == Some(id))
            .map(|(_, d, _)| d)
            .ok_or_else(|| {
                StoreError::NotFound(format!("{}: no record of {id}", self.describe()))
            })?;
        self.put_record(&tag.to_string(), &target)
    }

    /// Deletes the name record. containerd garbage-collects an image no record names,
    /// so, as CRI does, an ID-named record keeps the image when its last name goes.
    fn untag(&self, tag: &TagRef) -> Result<(), StoreError> {
        let records = self.resolved()?;
        let Some((name, target, id)) = records
            .iter()
            .find(|(n, _, _)| matches!(reference::parse(n), Ok(Parsed::Tag(t)) if &t == tag))
            .cloned()
        else {
            return Err(StoreError::NotFound(format!(
                "{}: no tag {tag}",
                self.describe()
            )));
        };
        if let Some(id) = &id {
            let others = records
                .iter()
                .any(|(n, _, i)| n != &name && i.as_ref() == Some(id));
            if !others {
                self.put_record(id, &target)?;
            }
        }
        self.delete_record(&name)
    }

    fn retag(&self, from: &TagRef, to: &TagRef) -> Result<(), StoreError> {
        let records = self.resolved()?;
        let Some((name, target, _)) = records
            .iter()
            .find(|(n, _, _)| matches!(reference::parse(n), Ok(Parsed::Tag(t)) if &t == from))
            .cloned()
        else {
            return Err(StoreError::NotFound(format!(
                "{}: no tag {from}",
                self.describe()
            )));
        };
        self.put_record(&to.to_string(), &target)?;
        self.delete_record(&name)
    }

    /// Deletes every record of an untagged image (ID record, digest references).
    fn delete_image(&self, id: &str) -> Result<(), StoreError> {
        let mine: Vec<String> = self
            .resolved()?
            .into_iter()
            .filter(|(_, _, i)| i.as_deref() == Some(id))
            .map(|(n, _, _)| n)
            .collect();
        if let Some(t) = mine.iter().find(|n| is_tag_name(n)) {
            return Err(StoreError::Busy(format!(
                "{}: {id} is still tagged {t}",
                self.describe()
            )));
        }
        if let Some(c) = self.container_using(id, &mine)? {
            return Err(StoreError::Busy(format!(
                "{}: {id} is used by container {c} (as `docker rmi` and `crictl rmi` refuse, it is not deleted)",
                self.describe()
            )));
        }
        if mine.is_empty() {
            return Err(StoreError::NotFound(format!(
                "{}: no record of {id}",
                self.describe()
            )));
        }
        for name in mine {
            self.delete_record(&name)?;
        }
        Ok(())
    }
}

/// A gRPC channel over containerd's unix socket. The URI is a placeholder that tonic
/// requires; the connector ignores it.
pub(crate) async fn connect(
    socket: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://[::]:0")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// A request in a containerd namespace.
pub(crate) fn request<T>(message: T, namespace: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(ns) = namespace.parse() {
        req.metadata_mut().insert("containerd-namespace", ns);
    }
    req
}

fn is_tag_name(name: &str) -> bool {
    !name.starts_with("moby-dangling@") && matches!(reference::parse(name), Ok(Parsed::Tag(_)))
}

#[cfg(test)]
mod tests {
    //! meta.db's image records, built as containerd writes them, read back with their
    //! content store: which names are tags, which dangle, and what is reported.

    use std::path::Path;

    use serde_json::{Value, json};

    use super::*;
    use crate::bbolt::tests::{Entry, Items, database, put_varint};
    use crate::source::sha256_id;

    /// Writes a blob into the content store; its digest.
    fn blob(root: &Path, value: &Value) -> (String, usize) {
        let bytes = serde_json::to_vec(value).unwrap();
        let digest = sha256_id(&bytes);
        let dir = root.join(CONTENT).join("blobs/sha256");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&digest[7..]), &bytes).unwrap();
        (digest, bytes.len())
    }

    fn record(name: &str, digest: &str, media_type: &str, size: i64) -> (Vec<u8>, Entry) {
        let target = vec![
            (b"digest".to_vec(), Entry::Value(digest.as_bytes().to_vec())),
            (
                b"mediatype".to_vec(),
                Entry::Value(media_type.as_bytes().to_vec()),
            ),
            (b"size".to_vec(), Entry::Value(put_varint(size))),
        ];
        (
            name.as_bytes().to_vec(),
            Entry::Bucket(vec![
                (b"target".to_vec(), Entry::Bucket(target)),
                (b"createdat".to_vec(), Entry::Value(vec![1, 2, 3])),
            ]),
        )
    }

    fn write_db(root: &Path, namespaces: Vec<(&str, Option<Items>)>, txid: u64) {
        let ns = namespaces
            .into_iter()
            .map(|(name, images)| {
                let mut buckets = vec![(b"leases".to_vec(), Entry::Bucket(vec![]))];
                if let Some(images) = images {
                    buckets.push((b"images".to_vec(), Entry::Bucket(images)));
                }
                (name.as_bytes().to_vec(), Entry::Bucket(buckets))
            })
            .collect();
        let db = database(
            vec![
                (b"v1".to_vec(), Entry::Bucket(ns)),
                (b"version".to_vec(), Entry::Value(b"3".to_vec())),
            ],
            txid,
        );
        let path = root.join(META_DB);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, db).unwrap();
    }

    const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";

    /// An image in the content store: its config's digest, and its manifest's.
    fn image(root: &Path, n: u32) -> (String, (String, usize)) {
        let (config, config_size) = blob(
            root,
            &json!({"architecture": "amd64", "os": "linux", "n": n}),
        );
        let manifest = blob(
            root,
            &json!({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config, "size": config_size},
                "layers": []}),
        );
        (config, manifest)
    }

    #[test]
    fn image_records_become_tags_ids_and_dangling_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (app, (app_manifest, app_size)) = image(root, 1);
        let (untagged, (untagged_manifest, untagged_size)) = image(root, 2);
        let platform = crate::source::shared::oci_walk::host_platform();
        let (index, index_size) = blob(
            root,
            &json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
                {"mediaType": MT_MANIFEST, "digest": app_manifest, "size": app_size,
                 "platform": {"os": platform.os, "architecture": platform.architecture}}]}),
        );
        let missing = format!("sha256:{}", "c".repeat(64));
        let index_size = index_size as i64;
        write_db(
            root,
            vec![
                (
                    "k8s.io",
                    Some(vec![
                        record("docker.io/library/app:1", &index, MT_INDEX, index_size),
                        // CRI's own records: the ID and the digest reference, no tags
                        record(&app, &index, MT_INDEX, index_size),
                        record(
                            &format!("docker.io/library/app@{index}"),
                            &index,
                            MT_INDEX,
                            index_size,
                        ),
                        // Docker's containerd store names an untagged image so
                        record(
                            &format!("moby-dangling@{untagged_manifest}"),
                            &untagged_manifest,
                            MT_MANIFEST,
                            untagged_size as i64,
                        ),
                        // a tag whose content was garbage-collected dangles
                        record("localhost/gone:1", &missing, MT_MANIFEST, 10),
                        record("No Such Name!", &app_manifest, MT_MANIFEST, app_size as i64),
                    ]),
                ),
                ("default", Some(vec![])),
                ("no-images", None),
            ],
            41,
        );
        assert_eq!(namespaces(root).unwrap(), ["default", "k8s.io"]);
        // a socket that is not there: no containerd of the machine's is asked
        let nowhere = root.join("no-containerd.sock");
        let store = Containerd::open(root, "k8s.io", nowhere.to_str(), Limits::default()).unwrap();
        assert_eq!(
            store.change_token().unwrap(),
            ChangeToken("txid:41".into()),
            "no containerd answers: the txid"
        );
        let inv = store.scan().unwrap();
        let named = |tag: &str| {
            inv.images
                .iter()
                .find(|r| r.tags.iter().any(|t| t.to_string() == tag))
                .unwrap_or_else(|| panic!("{tag}: {:?}", inv.images))
        };
        let app_record = named("docker.io/library/app:1");
        assert_eq!(app_record.claimed_id, app);
        assert_eq!(
            app_record.manifest_digests,
            [index.clone(), app_manifest.clone()]
        );
        assert!(app_record.config.is_some());
        let gone = named("localhost/gone:1");
        assert_eq!(gone.claimed_id, format!("missing-manifest:{missing}"));
        assert!(gone.config.is_none(), "the name dangles at what is missing");
        // every record is an image; only two give tags
        assert_eq!(inv.images.len(), 6);
        let tagged: usize = inv.images.iter().map(|r| r.tags.len()).sum();
        assert_eq!(tagged, 2, "{:?}", inv.images);
        assert!(
            inv.images
                .iter()
                .any(|r| r.claimed_id == untagged && r.tags.is_empty()),
            "moby-dangling@ is an untagged image"
        );
        assert!(
            inv.images
                .iter()
                .any(|r| r.digest_refs == [format!("docker.io/library/app@{index}")])
        );
        let problems = inv.problems.join("\n");
        assert!(problems.contains("No Such Name!"), "{problems}");
        assert!(problems.contains("blob missing"), "{problems}");
        // a namespace without records is empty, not an error
        let empty = Containerd::open(root, "default", None, Limits::default()).unwrap();
        assert!(empty.scan().unwrap().images.is_empty());
    }

    #[test]
    fn a_content_blob_that_is_no_regular_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (_, (manifest, size)) = image(root, 1);
        // the manifest replaced by a link to a file outside the store
        let outside = dir.path().join("outside.json");
        std::fs::write(&outside, b"{}").unwrap();
        let path = root.join(CONTENT).join("blobs/sha256").join(&manifest[7..]);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        write_db(
            root,
            vec![(
                "default",
                Some(vec![record(
                    "localhost/app:1",
                    &manifest,
                    MT_MANIFEST,
                    size as i64,
                )]),
            )],
            6,
        );
        let store = Containerd::open(root, "default", None, Limits::default()).unwrap();
        let inv = store.scan().unwrap();
        assert!(inv.images[0].config.is_none());
        assert!(
            inv.problems
                .iter()
                .any(|p| p.contains("not a regular file")),
            "{:?}",
            inv.problems
        );
        // a malformed digest names no file at all
        assert!(store.blob("sha256:../../../etc/passwd").is_err());
    }

    #[test]
    fn namespaces_and_sockets_are_named_as_containerd_names_them() {
        assert_eq!(
            split_namespace("/var/lib/containerd#k8s.io"),
            ("/var/lib/containerd", Some("k8s.io"))
        );
        assert_eq!(
            split_namespace("/var/lib/containerd"),
            ("/var/lib/containerd", None)
        );
        assert_eq!(
            split_namespace("/x#a/b"),
            ("/x#a/b", None),
            "a namespace has no slash"
        );
        assert_eq!(split_namespace("/x#"), ("/x#", None));
        assert_eq!(
            default_address(Path::new("/var/lib/rancher/k3s/agent/containerd")),
            Path::new("/run/k3s/containerd/containerd.sock")
        );
        assert_eq!(
            default_address(Path::new("/var/lib/containerd")),
            Path::new("/run/containerd/containerd.sock")
        );
        assert!(is_tag_name("docker.io/library/app:1"));
        for not_a_tag in [
            "moby-dangling@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "docker.io/library/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(!is_tag_name(not_a_tag), "{not_a_tag}");
        }
        // a root that is not containerd's says which file is missing
        let dir = tempfile::tempdir().unwrap();
        let e = namespaces(dir.path()).err().unwrap();
        assert!(e.to_string().contains("meta.db"), "{e}");
    }
}
