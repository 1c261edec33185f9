//! `mem:`: a store held in memory. Built by code ([`MemStore::new`], for the core's
//! and the catalog's tests and the reference model) or described by a JSON file
//! (`mem:store.json`, for trying imagefs and for the mount tests); changes made
//! through the mount are kept in memory only.
//!
//! It is shaped like a registry, not like a directory: its blobs are found by digest
//! ([`BlobLocation::Digest`]), its change token is a generation counter, not a file's
//! stat, and it has no path on this machine. It is one file and one line in
//! [`super::KINDS`], as any new kind is.
//!
//! The description file:
//!
//! ```json
//! {"images": [{"config": {"architecture": "amd64", "os": "linux"},
//!              "tags": ["localhost/app:1"]}],
//!  "dangling": [{"tag": "localhost/gone:1", "id": "sha256:…"}]}
//! ```

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use serde::Deserialize;

use super::{
    BlobLocation, ChangeToken, Edit, ImageRecord, Inventory, Kind, Opened, Source, SourceKind,
    SourceOptions, StoreDir, StoreError, StoreMeta, Writer, Written, sha256_id,
};
use crate::reference::TagRef;

pub static KIND: Kind = Kind {
    prefix: "mem",
    about: "a store described by a JSON file, held in memory (changes are not saved)",
    is_dir_store: None,
    archive: None,
    open,
};

fn open(spec: &str, options: &SourceOptions) -> Result<Vec<Opened>, StoreError> {
    Ok(vec![Opened::one(MemStore::from_file(
        Path::new(spec),
        options,
    )?)])
}

/// How a [`MemStore`] answers writes.
#[derive(Clone, Copy, Debug)]
pub enum Writes {
    /// Applied to its records.
    Apply,
    /// It has no writer: a read-only kind.
    None,
    /// Refused with this error, the records unchanged.
    Fail(fn() -> StoreError),
}

/// What a mem store holds. Every change through [`MemStore::change`] moves the
/// generation, as a store's own writers move its change token.
#[derive(Clone, Debug)]
pub struct MemState {
    pub blobs: HashMap<String, Arc<[u8]>>,
    pub records: Vec<ImageRecord>,
    /// What `content_key` answers (`None`: its catalog is never kept).
    pub content_key: Option<String>,
    pub writes: Writes,
    /// Who may read and change it; `None`: root's, read-only (a store that is no
    /// local file).
    pub meta: Option<StoreMeta>,
    generation: u64,
}

/// A store in memory. Clones share it: a test keeps one to change the store under a
/// mount, as another program would.
#[derive(Clone)]
pub struct MemStore {
    name: String,
    state: Arc<Mutex<MemState>>,
    scans: Arc<AtomicUsize>,
}

impl MemStore {
    /// An empty, writable store, shown as `mem:<name>`.
    pub fn new(name: &str) -> MemStore {
        MemStore {
            name: name.to_string(),
            state: Arc::new(Mutex::new(MemState {
                blobs: HashMap::new(),
                records: Vec::new(),
                content_key: None,
                writes: Writes::Apply,
                meta: None,
                generation: 0,
            })),
            scans: Arc::default(),
        }
    }

    /// Changes the store; the change token moves.
    pub fn change<T>(&self, f: impl FnOnce(&mut MemState) -> T) -> T {
        let mut state = self.state.lock();
        state.generation += 1;
        f(&mut state)
    }

    /// Changes the store without moving its change token: a file rewritten in place,
    /// which no token sees.
    pub fn tamper<T>(&self, f: impl FnOnce(&mut MemState) -> T) -> T {
        f(&mut self.state.lock())
    }

    /// The store as it is now.
    pub fn snapshot(&self) -> MemState {
        self.state.lock().clone()
    }

    /// Adds a blob; its location and digest.
    pub fn blob(&self, bytes: &[u8]) -> (BlobLocation, String) {
        let digest = sha256_id(bytes);
        self.change(|s| s.blobs.insert(digest.clone(), Arc::from(bytes)));
        (
            BlobLocation::Digest {
                digest: digest.clone(),
                size: bytes.len() as u64,
            },
            digest,
        )
    }

    /// Adds an image (its config, and its tags); its ID.
    pub fn image(&self, config: &[u8], tags: &[&str]) -> String {
        let (loc, id) = self.blob(config);
        let mut record = ImageRecord {
            claimed_id: id.clone(),
            config: Some(loc),
            config_name: format!("mem:{}:{id}", self.name),
            layers_size: Some(1234),
            ..Default::default()
        };
        let mut problems = Vec::new();
        for t in tags {
            record.add_name(t, "mem", &mut problems);
        }
        self.change(|s| s.records.push(record));
        id
    }

    /// How many times it was scanned.
    pub fn scans(&self) -> usize {
        self.scans.load(Ordering::Relaxed)
    }

    /// A store from its description file (read beneath its directory, as any store
    /// file is).
    pub fn from_file(path: &Path, options: &SourceOptions) -> Result<MemStore, StoreError> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(StoreError::unsupported(format!(
                "mem:{}: name a JSON file",
                path.display()
            )));
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let dir = StoreDir::open(dir, "store description's directory")
            .map_err(|e| StoreError::io(path.display(), e))?;
        let bytes = dir
            .read_own(name, options.limits.max_index_size)
            .map_err(|e| StoreError::io(dir.display(name), e))?;
        let described: Description = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::format(dir.display(name), format!("not a mem store: {e}")))?;
        if described.images.len() + described.dangling.len() > options.limits.max_images {
            return Err(StoreError::format(
                dir.display(name),
                options
                    .limits
                    .too_many_images(&dir.display(name), described.images.len()),
            ));
        }
        let store = MemStore::new(&path.display().to_string());
        // who may write the description may change the store
        let meta = dir
            .metadata(name)
            .map_err(|e| StoreError::io(dir.display(name), e))?
            .map(|m| StoreMeta::of(&m));
        store.change(|s| s.meta = meta);
        for image in described.images {
            let config = serde_json::to_vec(&image.config).map_err(|e| {
                StoreError::internal(dir.display(name), format!("cannot serialise: {e}"))
            })?;
            let tags: Vec<&str> = image.tags.iter().map(String::as_str).collect();
            store.image(&config, &tags);
        }
        for d in described.dangling {
            let mut record = ImageRecord {
                claimed_id: d.id,
                config_name: format!("{} dangling {}", dir.display(name), d.tag),
                ..Default::default()
            };
            let mut problems = Vec::new();
            record.add_name(&d.tag, "mem", &mut problems);
            store.change(|s| s.records.push(record));
        }
        Ok(store)
    }
}

#[derive(Deserialize)]
struct Description {
    #[serde(default)]
    images: Vec<DescribedImage>,
    #[serde(default)]
    dangling: Vec<DescribedDangling>,
}

#[derive(Deserialize)]
struct DescribedImage {
    config: serde_json::Value,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct DescribedDangling {
    tag: String,
    id: String,
}

impl Source for MemStore {
    fn kind(&self) -> SourceKind {
        &KIND
    }

    fn describe(&self) -> String {
        format!("{}:{}", KIND.prefix, self.name)
    }

    fn scan(&self) -> Result<Inventory, StoreError> {
        self.scans.fetch_add(1, Ordering::Relaxed);
        Ok(Inventory {
            images: self.state.lock().records.clone(),
            problems: vec![],
        })
    }

    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let BlobLocation::Digest { digest, .. } = blob else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {blob:?} is not a blob of a mem store", self.describe()),
            ));
        };
        let bytes = self
            .state
            .lock()
            .blobs
            .get(digest)
            .cloned()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: no blob {digest}", self.describe()),
                )
            })?;
        Ok(super::shared::blob::copy_at(&bytes, offset, buf))
    }

    fn change_token(&self) -> io::Result<ChangeToken> {
        Ok(ChangeToken(self.state.lock().generation.to_string()))
    }

    fn meta(&self) -> Option<StoreMeta> {
        self.state.lock().meta
    }

    fn content_key(&self) -> Option<String> {
        self.state.lock().content_key.clone()
    }

    fn writer(&self) -> Option<&dyn Writer> {
        match self.state.lock().writes {
            Writes::None => None,
            _ => Some(self),
        }
    }
}

impl Writer for MemStore {
    fn write(&self, edit: Edit<'_>) -> Result<(), StoreError> {
        self.write_tracked(edit).map(|_| ())
    }

    fn reports_tokens(&self) -> bool {
        true
    }

    fn write_tracked(&self, edit: Edit<'_>) -> Result<Written, StoreError> {
        if let Writes::Fail(error) = self.state.lock().writes {
            return Err(error());
        }
        let name = self.describe();
        let mut state = self.state.lock();
        let before = ChangeToken(state.generation.to_string());
        apply(&mut state.records, edit, &name)?;
        // a refused edit changed nothing, so the token stays, as a store's file stays
        state.generation += 1;
        let after = ChangeToken(state.generation.to_string());
        Ok(Written {
            tokens: Some((before, after)),
            // a delete takes records away: the mount reads the store again
            exact: !matches!(edit, Edit::Delete(_)),
            xattrs: Vec::new(),
        })
    }
}

/// An edit, as any store applies it: a tag names one image, moved from any other.
fn apply(records: &mut Vec<ImageRecord>, edit: Edit<'_>, store: &str) -> Result<(), StoreError> {
    let not_found = |what: String| StoreError::NotFound(format!("{store}: {what}"));
    let untag = |records: &mut Vec<ImageRecord>, tag: &TagRef| {
        let mut found = false;
        for r in records.iter_mut() {
            let before = r.tags.len();
            r.tags.retain(|t| t != tag);
            found |= r.tags.len() != before;
        }
        found
    };
    match edit {
        Edit::Tag { id, tag } => {
            let target = records
                .iter()
                .position(|r| r.claimed_id == id && r.config.is_some())
                .ok_or_else(|| not_found(format!("no image {id}")))?;
            untag(records, tag);
            records[target].tags.push(tag.clone());
        }
        Edit::Untag(tag) => {
            if !untag(records, tag) {
                return Err(not_found(format!("no tag {tag}")));
            }
        }
        Edit::Retag { from, to } => {
            let owner = records
                .iter()
                .position(|r| r.tags.contains(from))
                .ok_or_else(|| not_found(format!("no tag {from}")))?;
            untag(records, to);
            untag(records, from);
            records[owner].tags.push(to.clone());
        }
        Edit::Delete(id) => {
            let before = records.len();
            records.retain(|r| r.claimed_id != id);
            if records.len() == before {
                return Err(not_found(format!("no image {id}")));
            }
        }
    }
    // a record left without a config and without a name is gone
    records.retain(|r| r.config.is_some() || !r.tags.is_empty());
    Ok(())
}
