//! `containers-storage:`: the store podman, CRI-O and buildah share. Where
//! `<driver>-images/images.json` is parsed and written.
//!
//! - An image's config is the big-data item whose key is its config digest (found
//!   through the image's manifest, else the digest-shaped key), in
//!   `<driver>-images/<id>/<encoded key>` (`=` + base64 for keys outside `[0-9a-z.]`,
//!   as containers/storage names them). The store's own `id` can differ from the
//!   config digest (TOC pulls): it goes to `user.image.store-id`.
//! - Locking follows containers/storage's protocol: an fcntl lock over the whole of
//!   `images.lock` (shared to read, exclusive to write), and after a write a new
//!   64-byte last-write token at its start, which is what tells podman, CRI-O and
//!   buildah (and imagefs's watcher) to reload. imagefs takes open-file-description
//!   locks on one long-lived descriptor: they conflict with podman's record locks
//!   like record locks do, but closing another descriptor of the file in this process
//!   cannot drop them.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::Value;
use tracing::{info, warn};

use super::shared::blob::{read_file_blob, repin_file_blob};
use super::shared::json_limits::{self, Limited};
use super::shared::oci_walk::{MANIFEST_LIMIT, Platform, host_platform, no_platform_name};
use super::{
    BlobLocation, ChangeToken, Edit, ImageRecord, Inventory, Kind, Opened, Source, SourceKind,
    SourceOptions, StoreDir, StoreError, StoreMeta, Writer, Written,
};
use crate::limits::Limits;
use crate::reference::{self, Parsed, TagRef};
use crate::store_file::MAX_DIR_ENTRIES;

pub static KIND: Kind = Kind {
    prefix: "containers-storage",
    about: "the store of podman, CRI-O and buildah (/var/lib/containers/storage)",
    is_dir_store: Some(|dir| {
        DRIVERS.iter().any(|d| {
            dir.metadata(&format!("{d}-images/images.json"))
                .ok()
                .flatten()
                .is_some_and(|m| m.is_file())
        }) || dir.metadata("storage.lock").ok().flatten().is_some()
    }),
    archive: None,
    open,
};

/// The graph drivers whose `<driver>-images` a store may have.
const DRIVERS: [&str; 4] = ["vfs", "overlay", "btrfs", "zfs"];

fn open(spec: &str, options: &SourceOptions) -> Result<Vec<Opened>, StoreError> {
    let store = ContainersStorage::open(&super::spec_path(spec), options.limits)?
        .with_platform(options.platform());
    Ok(vec![Opened::one(store)])
}
/// layers.json may list this many layers per image the store may hold.
const LAYERS_PER_IMAGE: usize = 16;

pub struct ContainersStorage {
    root: PathBuf,
    limits: Limits,
    /// The platform picked from manifest lists.
    platform: Platform,
    /// The graph root: every file of the store is reached through it.
    dir: StoreDir,
    /// `<driver>-images`, beneath the root.
    images_dir: String,
    driver: String,
    /// images.lock, open for the life of the source: locks and tokens go through it.
    lock_file: File,
    /// In-process: one lock holder at a time on `lock_file`.
    lock_guard: Mutex<()>,
    /// Each image's names (by the store's image id) as imagefs last read or wrote
    /// them, to see what the next change did (see `stale_drops`).
    names_seen: Mutex<HashMap<String, Vec<String>>>,
    /// The names imagefs gave images during this mount (name → the store's image id),
    /// while they still have them.
    ours: Mutex<HashMap<String, String>>,
    meta: StoreMeta,
}

/// An OFD lock over the whole of images.lock; released when dropped.
struct StoreLock<'a>(&'a File);

impl<'a> StoreLock<'a> {
    fn take(file: &'a File, exclusive: bool) -> io::Result<StoreLock<'a>> {
        // SAFETY: a zeroed flock is a valid value; the fields are set below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = if exclusive {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        loop {
            // SAFETY: fcntl on our descriptor with a valid flock.
            let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLKW, &fl) };
            if rc == 0 {
                return Ok(StoreLock(file));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for StoreLock<'_> {
    fn drop(&mut self) {
        // SAFETY: as above, unlocking.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_UNLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: fcntl on our descriptor with a valid flock.
        unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    }
}

/// containers/storage's file name for a big-data key.
pub fn big_data_file_name(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|c| c == b'.' || c.is_ascii_digit() || c.is_ascii_lowercase())
    {
        key.to_string()
    } else {
        format!("={}", base64::engine::general_purpose::STANDARD.encode(key))
    }
}

fn is_store_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

impl ContainersStorage {
    /// The platform picked from manifest lists (the host's unless said).
    pub fn with_platform(mut self, platform: Platform) -> ContainersStorage {
        self.platform = platform;
        self
    }

    pub fn open(root: &Path, limits: Limits) -> Result<ContainersStorage, StoreError> {
        let fail = |e| StoreError::io(root.display(), e);
        let dir = StoreDir::open(root, "store").map_err(fail)?;
        let mut found: Vec<(std::time::SystemTime, String)> = dir
            .entries("", MAX_DIR_ENTRIES)
            .map_err(fail)?
            .into_iter()
            .filter_map(|(name, is_dir)| {
                let driver = name.strip_suffix("-images").filter(|_| is_dir)?.to_string();
                let json = dir
                    .symlink_metadata(&format!("{name}/images.json"))
                    .ok()??;
                Some((json.modified().ok()?, driver))
            })
            .collect();
        found.sort();
        let Some((_, driver)) = found.pop() else {
            return Err(StoreError::unsupported(format!(
                "{}: not a containers-storage graph root: no <driver>-images/images.json",
                root.display()
            )));
        };
        for (_, other) in &found {
            warn!(store = %root.display(), "images of the {other} driver are not shown: the store's newest is {driver}");
        }
        let images_dir = format!("{driver}-images");
        let lock_rel = format!("{images_dir}/images.lock");
        let lock_file = dir
            .open_own(&lock_rel, true)
            .or_else(|_| dir.open_own(&lock_rel, false))
            .map_err(|e| StoreError::io(dir.display(&lock_rel), e))?;
        let images_json = format!("{images_dir}/images.json");
        dir.open_own(&images_json, false)
            .map_err(|e| StoreError::io(dir.display(&images_json), e))?;
        // images.json is replaced in its directory: who may write there may tag
        let meta = dir
            .metadata(&images_dir)
            .map_err(|e| StoreError::io(dir.display(&images_dir), e))?
            .ok_or_else(|| {
                StoreError::NotFound(format!("{}: missing", dir.display(&images_dir)))
            })?;
        Ok(ContainersStorage {
            root: root.to_path_buf(),
            limits,
            platform: host_platform(),
            dir,
            images_dir,
            driver,
            lock_file,
            lock_guard: Mutex::new(()),
            names_seen: Mutex::default(),
            ours: Mutex::default(),
            meta: StoreMeta::of(&meta),
        })
    }

    fn images_json(&self) -> String {
        format!("{}/images.json", self.images_dir)
    }

    fn images_lock(&self) -> String {
        format!("{}/images.lock", self.images_dir)
    }

    fn layers_json(&self) -> String {
        format!("{}-layers/layers.json", self.driver)
    }

    /// images.json's records, at most `max_images` of them.
    fn read_images(&self) -> Result<Limited<Value>, StoreError> {
        let rel = self.images_json();
        let bytes = self
            .dir
            .read_own(&rel, self.limits.max_index_size)
            .map_err(|e| StoreError::io(self.dir.display(&rel), e))?;
        json_limits::list(&bytes, self.limits.max_images)
            .map_err(|e| StoreError::format(self.dir.display(&rel), format!("not valid: {e}")))
    }

    /// What a scan reads of images.json's records, at most `max_images` of them,
    /// parsed as the file is read (under the same size bound as [`Self::read_images`]).
    fn read_entries(&self) -> Result<Limited<ImageEntry>, StoreError> {
        use std::io::Read as _;
        let rel = self.images_json();
        let err = |e: io::Error| StoreError::io(self.dir.display(&rel), e);
        let file = self.dir.open_own(&rel, false).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        let limit = self.limits.max_index_size;
        if len > limit {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes, more than the {limit} bytes allowed for it"),
            )));
        }
        json_limits::list_from_reader(file.take(limit), self.limits.max_images)
            .map_err(|e| StoreError::format(self.dir.display(&rel), format!("not valid: {e}")))
    }

    /// The path beneath the root of a big-data file of image `id`.
    fn big_data_rel(&self, id: &str, key: &str) -> Option<String> {
        is_store_id(id).then(|| format!("{}/{id}/{}", self.images_dir, big_data_file_name(key)))
    }

    /// A big-data file of image `id`, if it is there (inside the store, a regular
    /// file).
    fn big_data(&self, id: &str, key: &str) -> Option<BlobLocation> {
        let rel = self.big_data_rel(id, key)?;
        match self.dir.metadata(&rel) {
            Ok(Some(m)) if m.is_file() => Some(BlobLocation::file(rel, &m)),
            Ok(Some(_)) => {
                warn!("{}: not a regular file", self.dir.display(&rel));
                None
            }
            Ok(None) => None,
            Err(e) => {
                warn!("{e}");
                None
            }
        }
    }

    /// A small big-data item (a manifest), read whole.
    fn read_big_data(&self, id: &str, key: &str) -> Option<Vec<u8>> {
        let rel = self.big_data_rel(id, key)?;
        match self.dir.read(&rel, MANIFEST_LIMIT) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!("{e}");
                None
            }
        }
    }

    /// The config digest of an image: what its manifest names, else the big-data key
    /// that is a digest.
    fn config_digest(&self, image: &ImageEntry) -> Option<String> {
        let id = image.id.as_deref()?;
        self.config_digest_in(image, self.manifest(id).as_ref())
    }

    /// An image's manifest, parsed (`None` when it has none or it is no JSON).
    fn manifest(&self, id: &str) -> Option<Value> {
        serde_json::from_slice(&self.read_big_data(id, "manifest")?).ok()
    }

    /// [`Self::config_digest`], given the image's manifest as read.
    fn config_digest_in(&self, image: &ImageEntry, manifest: Option<&Value>) -> Option<String> {
        if let Some(d) = manifest
            .and_then(|m| m.pointer("/config/digest"))
            .and_then(Value::as_str)
            && reference::is_digest(d)
        {
            return Some(d.to_string());
        }
        image
            .big_data_names
            .iter()
            .find(|k| reference::is_digest(k))
            .cloned()
    }

    /// For a manifest list (`buildah manifest create`): the instance for the platform
    /// among the store's images (`Ok(None)` when the store lacks it; `Err` with the
    /// platforms there when the list has none for it), and the other platforms. None
    /// for an ordinary image.
    #[allow(clippy::type_complexity)]
    fn list_instance(
        &self,
        list: Option<&Value>,
        images: &[ImageEntry],
        by_manifest: &HashMap<String, usize>,
    ) -> Option<(Result<Option<usize>, Vec<String>>, Vec<String>)> {
        let entries = list?.get("manifests")?.as_array()?;
        let host = &self.platform;
        let platform = |e: &Value| {
            let p = e.get("platform")?;
            Some(Platform {
                architecture: p.get("architecture")?.as_str()?.to_string(),
                os: p.get("os")?.as_str()?.to_string(),
                variant: p.get("variant").and_then(Value::as_str).map(str::to_string),
            })
        };
        // the platform's own entry, as podman picks it, else one naming no platform
        let chosen = entries
            .iter()
            .position(|e| platform(e).is_some_and(|p| host.matches(&p)))
            .or_else(|| entries.iter().position(|e| e.get("platform").is_none()));
        let Some(chosen) = chosen else {
            let there = entries
                .iter()
                .filter_map(|e| platform(e).map(|p| p.display()))
                .collect();
            return Some((Err(there), Vec::new()));
        };
        let others = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != chosen)
            .filter_map(|(_, e)| platform(e).map(|p| p.display()))
            .collect();
        let digest = entries.get(chosen)?.get("digest")?.as_str()?;
        let instance = by_manifest
            .get(digest)
            .copied()
            .filter(|&i| i < images.len());
        Some((Ok(instance), others))
    }

    /// layer id → (parent, size), from `<driver>-layers/layers.json`.
    fn layer_sizes(&self) -> HashMap<String, (Option<String>, u64)> {
        let bytes = match self
            .dir
            .read_own(&self.layers_json(), self.limits.max_index_size)
        {
            Ok(b) => b,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!("image sizes are not shown: {e}");
                }
                return HashMap::new();
            }
        };
        let max = self.limits.max_images.saturating_mul(LAYERS_PER_IMAGE);
        let Ok(layers) = json_limits::list::<Value>(&bytes, max) else {
            return HashMap::new();
        };
        if layers.truncated() {
            warn!(
                "{}: more than {max} layers: some image sizes are not shown",
                self.dir.display(&self.layers_json())
            );
        }
        layers
            .items
            .iter()
            .filter_map(|l| {
                let id = l.get("id")?.as_str()?.to_string();
                let parent = l.get("parent").and_then(Value::as_str).map(str::to_string);
                let size = l
                    .get("diff-size")
                    .or_else(|| l.get("compressed-size"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                Some((id, (parent, size)))
            })
            .collect()
    }

    /// One names edit under the store's write lock, written the way
    /// containers/storage writes: images.json replaced atomically, then a new
    /// last-write token. The edit says what else it changed on the image it touched
    /// (its names history), or `None` when a scan must tell; with the change tokens
    /// before and after, read under the lock, that is what the mount applies.
    fn edit_names(
        &self,
        edit: impl FnOnce(
            &mut Vec<Value>,
            &dyn Fn(&Value) -> Option<String>,
        ) -> Result<Option<Vec<(String, String, String)>>, StoreError>,
    ) -> Result<Written, StoreError> {
        let rel = self.images_json();
        let _in_process = self.lock_guard.lock();
        let _lock = StoreLock::take(&self.lock_file, true).map_err(|e| {
            StoreError::io(
                format!("{}: lock", self.dir.display(&self.images_lock())),
                e,
            )
        })?;
        let before = self.change_token().ok();
        let listed = self.read_images()?;
        // every record is written back: a store over the bound is not written
        if listed.truncated() {
            return Err(StoreError::Unsupported(format!(
                "{}: not written",
                self.limits
                    .too_many_images(&self.dir.display(&rel), listed.total)
            )));
        }
        let mut images = listed.items;
        // names a stale write dropped since imagefs last looked go back first, in
        // this same write: once it is written, the drop could no longer be seen
        let dropped = self.stale_drops(&entries(&images));
        restore_names(&mut images, &dropped);
        let id_of = |image: &Value| self.config_digest(&ImageEntry::of(image));
        let xattrs = edit(&mut images, &id_of)?;
        for (id, name) in &dropped {
            warn!(store = %self.root.display(), image = %id, "a write from a stale copy of the names (podman 4.3 and older tag that way) dropped {name}, which imagefs had added: added back");
        }
        *self.names_seen.lock() = names_by_id(&entries(&images));
        let bytes = serde_json::to_vec(&images).map_err(|e| {
            StoreError::internal(self.dir.display(&rel), format!("cannot serialise: {e}"))
        })?;
        self.dir
            .replace(&rel, &bytes)
            .map_err(|e| StoreError::io(self.dir.display(&rel), e))?;
        self.record_write().map_err(|e| {
            StoreError::io(
                format!(
                    "{}: last-write token",
                    self.dir.display(&self.images_lock())
                ),
                e,
            )
        })?;
        Ok(Written {
            tokens: before.zip(self.change_token().ok()),
            // names put back are a change the edit does not describe
            exact: xattrs.is_some() && dropped.is_empty(),
            xattrs: xattrs.unwrap_or_default(),
        })
    }

    /// The names history a scan now shows for image `id`, made by record `at`, when
    /// that record alone makes the image: no other record holds its config, and no
    /// manifest list (a record without a config, whose names and history are shown on
    /// its instance too) names its manifest. `None`: a scan must tell. Reads only the
    /// lists' manifests, which are few.
    fn sole_history(
        &self,
        images: &[Value],
        at: usize,
        id: &str,
    ) -> Option<Vec<(String, String, String)>> {
        // borrowed from the records: this walks every record on every write
        fn keys(image: &Value) -> impl Iterator<Item = &str> {
            image
                .get("big-data-names")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
        }
        let target = images.get(at)?;
        if !keys(target).any(|k| k == id) {
            return None;
        }
        let manifests: Vec<&str> = keys(target)
            .filter_map(|k| k.strip_prefix("manifest-"))
            .chain(target.get("digest").and_then(Value::as_str))
            .collect();
        for (i, image) in images.iter().enumerate() {
            if i != at && keys(image).any(|k| k == id) {
                return None;
            }
            if !keys(image).any(reference::is_digest) {
                let list_id = image.get("id").and_then(Value::as_str)?;
                let list = self.read_big_data(list_id, "manifest")?;
                let list = String::from_utf8_lossy(&list);
                if manifests.iter().any(|m| list.contains(m)) {
                    return None;
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        let history: Vec<&str> = target
            .get("names-history")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|n| seen.insert(*n))
            .collect();
        Some(vec![(
            id.to_string(),
            "user.image.history".to_string(),
            history.join(","),
        )])
    }

    /// Names imagefs gave that a write by another program dropped from a stale copy:
    /// podman up to 4.3 tags by reading the image's names before it takes the lock
    /// and writing back that list plus its new name (containers/common's libimage
    /// `SetNames(append(i.Names(), name))`; later versions call `AddNames` under the
    /// lock), so a name another writer added in between is lost. Its mark: one change
    /// that both adds a name to an image and drops another, which no single
    /// containers/storage operation does. A drop without an addition (an untag) is
    /// never undone.
    fn stale_drops(&self, images: &[ImageEntry]) -> Vec<(String, String)> {
        let seen = self.names_seen.lock();
        let ours = self.ours.lock();
        if ours.is_empty() || seen.is_empty() {
            return Vec::new();
        }
        let anywhere: std::collections::HashSet<&str> = images
            .iter()
            .flat_map(|i| i.names.iter().map(String::as_str))
            .collect();
        let mut out = Vec::new();
        for image in images {
            let Some(id) = image.id.as_deref() else {
                continue;
            };
            let Some(old) = seen.get(id) else { continue };
            let now = &image.names;
            if !now.iter().any(|n| !old.contains(n)) {
                continue;
            }
            for name in old {
                if !now.contains(name)
                    && !anywhere.contains(name.as_str())
                    && ours.get(name).is_some_and(|owner| owner == id)
                {
                    out.push((id.to_string(), name.clone()));
                }
            }
        }
        out
    }

    /// Writes a new last-write token, as containers/storage's RecordWrite does:
    /// nanoseconds, a counter, the pid, random bytes; 64 bytes at the start.
    fn record_write(&self) -> io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut token = [0u8; 64];
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        token[0..8].copy_from_slice(&nanos.to_le_bytes());
        token[8..16].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        token[16..20].copy_from_slice(&std::process::id().to_le_bytes());
        // SAFETY: getrandom fills the buffer we own.
        let n = unsafe { libc::getrandom(token[20..].as_mut_ptr().cast(), 44, 0) };
        if n != 44 {
            return Err(io::Error::last_os_error());
        }
        self.lock_file.write_all_at(&token, 0)?;
        self.lock_file.sync_data()
    }
}

/// Adds back (id, name) pairs to the images of those store ids, unless the name is on
/// an image already.
fn restore_names(images: &mut [Value], dropped: &[(String, String)]) {
    for (id, name) in dropped {
        if images.iter().any(|i| names(i).contains(name)) {
            continue;
        }
        if let Some(image) = images
            .iter_mut()
            .find(|i| i.get("id").and_then(Value::as_str) == Some(id.as_str()))
        {
            let mut new = names(image);
            new.push(name.clone());
            set_names(image, new);
        }
    }
}

/// Each named image's names, by the store's image id (an image without names has
/// none a stale write could drop).
fn names_by_id(images: &[ImageEntry]) -> HashMap<String, Vec<String>> {
    images
        .iter()
        .filter(|i| !i.names.is_empty())
        .filter_map(|i| Some((i.id.clone()?, i.names.clone())))
        .collect()
}

fn names(image: &Value) -> Vec<String> {
    strings(image, "names")
}

/// The strings of list `key` of a record (other elements skipped).
fn strings(image: &Value, key: &str) -> Vec<String> {
    image
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn entries(images: &[Value]) -> Vec<ImageEntry> {
    images.iter().map(ImageEntry::of).collect()
}

/// What a scan reads of an images.json record. The scan parses the file into these
/// as it reads it: the records' other fields (metadata, big-data sizes and digests)
/// are skipped unread, and no record is held as a JSON value. Read as leniently as
/// the values the writes edit: a field of another type is absent, and an element
/// that is no object is a record without an id.
#[derive(Debug, Default, PartialEq)]
struct ImageEntry {
    id: Option<String>,
    digest: Option<String>,
    names: Vec<String>,
    names_history: Vec<String>,
    big_data_names: Vec<String>,
    layer: Option<String>,
}

/// The fields of a record that [`ImageEntry`] reads.
const ENTRY_FIELDS: [&str; 6] = [
    "id",
    "digest",
    "names",
    "names-history",
    "big-data-names",
    "layer",
];

impl ImageEntry {
    fn of(image: &Value) -> ImageEntry {
        let text = |k: &str| image.get(k).and_then(Value::as_str).map(str::to_string);
        ImageEntry {
            id: text("id"),
            digest: text("digest"),
            names: names(image),
            names_history: strings(image, "names-history"),
            big_data_names: strings(image, "big-data-names"),
            layer: text("layer"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ImageEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ImageEntry, D::Error> {
        struct EntryVisitor;
        impl<'de> serde::de::Visitor<'de> for EntryVisitor {
            type Value = ImageEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an image record")
            }
            // only the fields read become values, then are read as a record's are
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ImageEntry, A::Error> {
                let mut read = serde_json::Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if ENTRY_FIELDS.contains(&key.as_str()) {
                        read.insert(key, map.next_value()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(ImageEntry::of(&Value::Object(read)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ImageEntry, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(ImageEntry::default())
            }
            fn visit_unit<E>(self) -> Result<ImageEntry, E> {
                Ok(ImageEntry::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<ImageEntry, E> {
                Ok(ImageEntry::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<ImageEntry, E> {
                Ok(ImageEntry::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<ImageEntry, E> {
                Ok(ImageEntry::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<ImageEntry, E> {
                Ok(ImageEntry::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<ImageEntry, E> {
                Ok(ImageEntry::default())
            }
        }
        d.deserialize_any(EntryVisitor)
    }
}

fn set_names(image: &mut Value, new: Vec<String>) {
    let Some(obj) = image.as_object_mut() else {
        return;
    };
    if new.is_empty() {
        obj.remove("names"); // containers/storage omits an empty list
    } else {
        obj.insert("names".into(), Value::from(new));
    }
}

/// As containers/storage's addNameToHistory: the newest first, no duplicates.
fn add_to_history(image: &mut Value, name: &str) {
    let Some(obj) = image.as_object_mut() else {
        return;
    };
    let mut history: Vec<String> = obj
        .get("names-history")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .filter(|n| n != name)
        .collect();
    history.insert(0, name.to_string());
    obj.insert("names-history".into(), Value::from(history));
}

/// Whether a stored name is this tag (stored names are canonical; short ones are
/// compared after normalising).
fn is_tag(name: &str, tag: &TagRef) -> bool {
    matches!(reference::parse(name), Ok(Parsed::Tag(t)) if &t == tag)
}

impl Source for ContainersStorage {
    fn kind(&self) -> SourceKind {
        &KIND
    }

    fn describe(&self) -> String {
        format!("{}:{}", KIND.prefix, self.root.display())
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn scan(&self) -> Result<Inventory, StoreError> {
        let read = || {
            let _in_process = self.lock_guard.lock();
            let _lock = StoreLock::take(&self.lock_file, false)
                .map_err(|e| StoreError::io(self.dir.display(&self.images_lock()), e))?;
            self.read_entries()
        };
        let mut images = read()?;
        if !self.stale_drops(&images.items).is_empty() {
            // a write of nothing: it gives the dropped names back (see edit_names)
            if let Err(e) = self.edit_names(|_, _| Ok(None)) {
                warn!(store = %self.root.display(), "names a stale write dropped could not be added back: {e}");
            }
            images = read()?;
        }
        *self.names_seen.lock() = names_by_id(&images.items);
        let mut inv = Inventory::default();
        if images.truncated() {
            inv.problems.push(
                self.limits
                    .too_many_images(&self.dir.display(&self.images_json()), images.total),
            );
        }
        let images = images.items;
        let layers = self.layer_sizes();
        // manifest digest → image, for manifest lists, whose instances are images of
        // the same store
        let mut by_manifest: HashMap<String, usize> = HashMap::new();
        for (i, image) in images.iter().enumerate() {
            if let Some(d) = &image.digest {
                by_manifest.entry(d.clone()).or_insert(i);
            }
            for key in &image.big_data_names {
                if let Some(d) = key.strip_prefix("manifest-") {
                    by_manifest.entry(d.to_string()).or_insert(i);
                }
            }
        }
        for image in &images {
            let Some(id) = image.id.as_deref() else {
                inv.problems.push(format!(
                    "{}: an image without an id: skipped",
                    self.dir.display(&self.images_json())
                ));
                continue;
            };
            let what = format!("{}: image {id}", self.dir.display(&self.images_json()));
            let mut record = ImageRecord {
                config_name: format!("{what} config"),
                ..Default::default()
            };
            // read once: it says whether this is a list, and else names the config
            let manifest = self.manifest(id);
            let list = self.list_instance(manifest.as_ref(), &images, &by_manifest);
            if let Some((_, others)) = &list {
                record.other_platforms = others.clone();
                record
                    .extra_xattrs
                    .push(("user.image.manifest-list".into(), format!("sha256:{id}")));
            }
            if let Some((Err(there), _)) = &list {
                // no entry for the platform: its names dangle, never at another's
                inv.problems.push(format!(
                    "{what}: manifest list has no image for {} (it has {}): its names dangle (-o platform= picks another)",
                    self.platform.display(),
                    there.join(", ")
                ));
                let digest = image
                    .digest
                    .clone()
                    .filter(|d| crate::reference::is_digest(d))
                    .unwrap_or_else(|| format!("sha256:{id}"));
                record.claimed_id = no_platform_name(&self.platform, &digest);
                for name in &image.names {
                    record.add_name(name, &what, &mut inv.problems);
                }
                inv.images.push(record);
                continue;
            }
            let source_image = list
                .as_ref()
                .and_then(|(i, _)| i.as_ref().ok().copied().flatten())
                .map(|i| &images[i])
                .unwrap_or(image);
            let source_id = source_image.id.as_deref().unwrap_or(id);
            let digest = if std::ptr::eq(source_image, image) {
                self.config_digest_in(image, manifest.as_ref())
            } else {
                self.config_digest(source_image)
            };
            match digest {
                Some(digest) => {
                    let id = source_id;
                    record.config = self.big_data(id, &digest);
                    if record.config.is_none() {
                        inv.problems
                            .push(format!("{what}: config {digest} is missing"));
                    }
                    if digest != format!("sha256:{id}") {
                        record
                            .extra_xattrs
                            .push(("user.image.store-id".into(), id.to_string()));
                    }
                    record.claimed_id = digest;
                }
                None => {
                    inv.problems
                        .push(format!("{what}: no config digest among its big data"));
                    record.claimed_id = format!("sha256:{id}");
                }
            }
            for name in &image.names {
                record.add_name(name, &what, &mut inv.problems);
            }
            if let Some(d) = &image.digest {
                record.manifest_digests.push(d.clone());
            }
            if !image.names_history.is_empty() {
                record
                    .extra_xattrs
                    .push(("user.image.history".into(), image.names_history.join(",")));
            }
            // the layer chain from the top layer down
            let mut size = 0;
            let mut next = source_image.layer.clone();
            let mut seen = 0;
            while let Some(l) = next.take() {
                seen += 1;
                if seen > 4096 {
                    break; // a loop in layers.json
                }
                if let Some((parent, s)) = layers.get(&l) {
                    size += s;
                    next = parent.clone();
                }
            }
            record.layers_size = Some(size);
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

    /// The 64-byte last-write token every writer of the store records.
    fn change_token(&self) -> io::Result<ChangeToken> {
        let mut token = [0u8; 64];
        let n = self.lock_file.read_at(&mut token, 0)?;
        // the file's identity too, for stores whose writers predate the token
        let file = ChangeToken::of_file(&self.dir, &self.images_json())?;
        Ok(ChangeToken(format!(
            "{}:{}",
            hex::encode(&token[..n]),
            file.0
        )))
    }

    fn meta(&self) -> Option<StoreMeta> {
        Some(self.meta)
    }

    /// `<driver>-images/`: every writer rewrites images.lock's last-write token in
    /// place and replaces images.json by rename.
    fn watches(&self) -> Vec<super::Watch> {
        self.dir
            .open_dir(&self.images_dir, "images directory")
            .ok()
            .map(|dir| super::Watch {
                dir,
                names: vec!["images.lock".into(), "images.json".into()],
            })
            .into_iter()
            .collect()
    }

    /// The last-write token (every writer under the lock protocol moves it), and the
    /// identities of images.json, layers.json (image sizes) and the directories
    /// holding the big-data files.
    fn content_key(&self) -> Option<String> {
        let files = ChangeToken::identities(
            &self.dir,
            [
                self.images_json().as_str(),
                self.layers_json().as_str(),
                self.images_dir.as_str(),
                ".",
            ],
        );
        Some(format!("{}|{files}", self.change_token().ok()?.0))
    }

    fn writer(&self) -> Option<&dyn Writer> {
        Some(self)
    }
}

impl Writer for ContainersStorage {
    fn write(&self, edit: Edit<'_>) -> Result<(), StoreError> {
        self.write_tracked(edit).map(|_| ())
    }

    fn reports_tokens(&self) -> bool {
        true
    }

    fn write_tracked(&self, edit: Edit<'_>) -> Result<Written, StoreError> {
        match edit {
            Edit::Tag { id, tag } => self.tag(id, tag),
            Edit::Untag(tag) => self.untag(tag),
            Edit::Retag { from, to } => self.retag(from, to),
            Edit::Delete(id) => self.delete_image(id),
        }
    }
}

/// The edits, one method each.
impl ContainersStorage {
    fn tag(&self, id: &str, tag: &TagRef) -> Result<Written, StoreError> {
        let name = tag.to_string();
        let mut tagged = None;
        let written = self.edit_names(|images, id_of| {
            let target = images
                .iter()
                .position(|i| id_of(i).as_deref() == Some(id))
                .ok_or_else(|| StoreError::NotFound(format!("no image {id}")))?;
            tagged = images[target]
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string);
            for (i, image) in images.iter_mut().enumerate() {
                if i != target {
                    let left: Vec<String> = names(image)
                        .into_iter()
                        .filter(|n| !is_tag(n, tag))
                        .collect();
                    set_names(image, left);
                }
            }
            let image = &mut images[target];
            let mut new: Vec<String> = names(image)
                .into_iter()
                .filter(|n| !is_tag(n, tag))
                .collect();
            new.push(name.clone());
            set_names(image, new);
            add_to_history(image, &name);
            Ok(self.sole_history(images, target, id))
        })?;
        if let Some(store_id) = tagged {
            self.ours.lock().insert(name, store_id);
        }
        Ok(written)
    }

    fn untag(&self, tag: &TagRef) -> Result<Written, StoreError> {
        self.ours.lock().retain(|n, _| !is_tag(n, tag));
        self.edit_names(|images, _| {
            let mut found = false;
            for image in images.iter_mut() {
                let before = names(image);
                let left: Vec<String> =
                    before.iter().filter(|n| !is_tag(n, tag)).cloned().collect();
                if left.len() != before.len() {
                    found = true;
                    set_names(image, left);
                }
            }
            if found {
                // names only: the history keeps what an image was called
                Ok(Some(Vec::new()))
            } else {
                Err(StoreError::NotFound(format!("no tag {tag}")))
            }
        })
    }

    fn retag(&self, from: &TagRef, to: &TagRef) -> Result<Written, StoreError> {
        let name = to.to_string();
        let mut moved_to = None;
        let written = self.edit_names(|images, id_of| {
            let owner = images
                .iter()
                .position(|i| names(i).iter().any(|n| is_tag(n, from)))
                .ok_or_else(|| StoreError::NotFound(format!("no tag {from}")))?;
            moved_to = images[owner]
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string);
            for image in images.iter_mut() {
                let left: Vec<String> = names(image)
                    .into_iter()
                    .filter(|n| !is_tag(n, to) && !is_tag(n, from))
                    .collect();
                set_names(image, left);
            }
            let image = &mut images[owner];
            let mut new = names(image);
            new.push(name.clone());
            set_names(image, new);
            add_to_history(image, &name);
            Ok(id_of(&images[owner]).and_then(|id| self.sole_history(images, owner, &id)))
        })?;
        let mut ours = self.ours.lock();
        ours.retain(|n, _| !is_tag(n, from));
        if let Some(store_id) = moved_to {
            ours.insert(name, store_id);
        }
        Ok(written)
    }

    fn delete_image(&self, id: &str) -> Result<Written, StoreError> {
        info!(store = %self.root.display(), image = id, "not deleted: layers are podman's to remove");
        Err(StoreError::NotPermitted(format!(
            "{}: deleting images is left to `podman rmi {}` (it removes the image's layers under the store's layer locks)",
            self.root.display(),
            id.trim_start_matches("sha256:")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_data_names_follow_containers_storage() {
        assert_eq!(big_data_file_name("manifest"), "manifest");
        assert_eq!(
            big_data_file_name("sha256:ab"),
            format!(
                "={}",
                base64::engine::general_purpose::STANDARD.encode("sha256:ab")
            )
        );
        assert_eq!(big_data_file_name("Manifest"), "=TWFuaWZlc3Q=");
    }

    #[test]
    fn history_puts_the_newest_first_once() {
        let mut image = serde_json::json!({"names-history": ["a:1", "b:1"]});
        add_to_history(&mut image, "b:1");
        assert_eq!(image["names-history"], serde_json::json!(["b:1", "a:1"]));
    }

    #[test]
    fn records_read_as_the_file_is_parsed_equal_the_values_the_writes_read() {
        let records = r#"[
            {"id": "a1", "digest": "sha256:d", "names": ["x:1", 7, "y:2"],
             "names-history": ["x:1"], "big-data-names": ["manifest", "sha256:c"],
             "layer": "l1", "metadata": {"names": ["not", "these"]},
             "big-data-digests": {"manifest": "sha256:e"}},
            {"id": 5, "names": "x", "layer": null, "big-data-names": {"a": 1}},
            {"names": ["first"], "names": ["last"]},
            "not a record", 3, null, [1, [2]], {}
        ]"#;
        let values: Vec<Value> = serde_json::from_str(records).unwrap();
        let streamed: Limited<ImageEntry> =
            json_limits::list_from_reader(records.as_bytes(), 100).unwrap();
        assert_eq!(streamed.items, entries(&values));
        let first = &streamed.items[0];
        assert_eq!(first.id.as_deref(), Some("a1"));
        assert_eq!(first.names, ["x:1", "y:2"]);
        assert_eq!(first.big_data_names, ["manifest", "sha256:c"]);
        assert_eq!(streamed.items[1], ImageEntry::default());
        assert_eq!(streamed.items[2].names, ["last"]);
        assert_eq!(streamed.items.len(), 8);
    }
}
