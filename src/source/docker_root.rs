//! `docker-root:`: Docker's data root (`/var/lib/docker`, or any `--data-root`).
//! Where `image/<driver>/repositories.json` is parsed and written.
//!
//! Tags come from `repositories.json` ({"Repositories": {repo: {"repo:tag" or
//! "repo@digest": "sha256:<id>"}}}, familiar names), configs from
//! `imagedb/content/sha256/<id>` (named by their digest: the catalog verifies it), sizes
//! from `layerdb/sha256/<chain id>/size`.
//!
//! Writes: while dockerd answers on its socket, only through its Engine API (dockerd
//! keeps the store in memory and would overwrite any edit); with no daemon,
//! repositories.json is replaced atomically, as Docker writes it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tracing::warn;

use super::shared::blob::{chain_ids, diff_ids, read_file_blob, repin_file_blob};
use super::shared::daemon;
use super::{
    BlobLocation, ChangeToken, Edit, ImageRecord, Inventory, Kind, Opened, Source, SourceKind,
    SourceOptions, StoreDir, StoreError, StoreMeta, Writer,
};
use crate::limits::Limits;
use crate::reference::{self, Parsed, TagRef};
use crate::store_file::MAX_DIR_ENTRIES;

/// A config read for its layer list (sizes); the catalog hashes configs of any size.
const CONFIG_PARSE_LIMIT: u64 = 16 << 20;
/// layerdb's `size` files hold one decimal number.
const SIZE_FILE_LIMIT: u64 = 64;
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

pub static KIND: Kind = Kind {
    prefix: "docker-root",
    about: "Docker's data root (/var/lib/docker)",
    // `image/`, and beside it `containers/` or some `image/<driver>/imagedb`
    is_dir_store: Some(|dir| {
        let is_dir = |rel: &str| dir.metadata(rel).ok().flatten().is_some_and(|m| m.is_dir());
        is_dir("image")
            && (is_dir("containers")
                || dir
                    .entries("image", 1024)
                    .unwrap_or_default()
                    .iter()
                    .any(|(name, d)| *d && is_dir(&format!("image/{name}/imagedb"))))
    }),
    archive: None,
    open,
};

fn open(spec: &str, options: &SourceOptions) -> Result<Vec<Opened>, StoreError> {
    let root = DockerRoot::open(
        &super::spec_path(spec),
        options.docker_host.as_deref(),
        options.limits,
    )?;
    Ok(vec![Opened::one(root)])
}

pub struct DockerRoot {
    root: PathBuf,
    limits: Limits,
    /// The data root: every file of the store is reached through it.
    dir: StoreDir,
    /// `image/<driver>` directories beneath the root, the first one written when
    /// dockerd is down.
    drivers: Vec<String>,
    /// The daemon's socket: `-o docker_host=`, DOCKER_HOST, or the default.
    socket: PathBuf,
    meta: StoreMeta,
}

fn hex_id(id: &str) -> Option<&str> {
    let hex = id.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

/// Docker's familiar form of a repository (`busybox`, `user/app`, `quay.io/x/y`): the
/// keys repositories.json uses.
pub fn familiar_name(tag: &TagRef) -> String {
    match (tag.domain.as_str(), tag.path.strip_prefix("library/")) {
        ("docker.io", Some(short)) if !short.contains('/') => short.to_string(),
        ("docker.io", _) => tag.path.to_string(),
        _ => tag.name(),
    }
}

impl DockerRoot {
    pub fn open(
        root: &Path,
        docker_host: Option<&str>,
        limits: Limits,
    ) -> Result<DockerRoot, StoreError> {
        let dir =
            StoreDir::open(root, "data root").map_err(|e| StoreError::io(root.display(), e))?;
        let is_dir = |rel: &str| dir.metadata(rel).ok().flatten().is_some_and(|m| m.is_dir());
        let mut drivers: Vec<String> = dir
            .entries("image", MAX_DIR_ENTRIES)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, d)| *d)
            .map(|(name, _)| format!("image/{name}"))
            .filter(|d| is_dir(&format!("{d}/imagedb")))
            .collect();
        drivers.sort();
        if drivers.is_empty() {
            let hint = if is_dir("containerd") || is_dir("image") {
                " (Docker with the containerd image store keeps its images in containerd's \
                 `moby` namespace: mount containerd:/var/lib/containerd#moby instead)"
            } else {
                ""
            };
            return Err(StoreError::unsupported(format!(
                "{}: no image/<driver>/imagedb: not a Docker data root, or one with no images{hint}",
                root.display()
            )));
        }
        if drivers.len() > 1 {
            let names: Vec<&str> = drivers
                .iter()
                .map(|d| d.trim_start_matches("image/"))
                .collect();
            warn!(store = %root.display(), "images of several graph drivers, all shown: {}", names.join(", "));
        }
        let host = docker_host
            .map(str::to_string)
            .unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
        let socket = PathBuf::from(host.strip_prefix("unix://").unwrap_or(&host));
        let meta = dir
            .metadata(&drivers[0])
            .and_then(|m| m.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "missing")))
            .map_err(|e| StoreError::io(dir.display(&drivers[0]), e))?;
        Ok(DockerRoot {
            root: root.to_path_buf(),
            limits,
            dir,
            drivers,
            socket,
            meta: StoreMeta::of(&meta),
        })
    }

    fn read_repositories(&self, driver: &str) -> Result<Value, StoreError> {
        let rel = format!("{driver}/repositories.json");
        let bytes = match self.dir.read_own(&rel, self.limits.max_index_size) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(serde_json::json!({"Repositories": {}}));
            }
            Err(e) => return Err(StoreError::io(self.dir.display(&rel), e)),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::format(self.dir.display(&rel), format!("not valid: {e}")))
    }

    /// Sum of the layer sizes of a config, through layerdb's chain IDs.
    fn layers_size(&self, driver: &str, config: &str) -> Option<u64> {
        let bytes = self.dir.read(config, CONFIG_PARSE_LIMIT).ok()?;
        let diffs = diff_ids(&bytes);
        let diffs: Vec<&str> = diffs.iter().map(String::as_str).collect();
        let mut total: u64 = 0;
        for chain in chain_ids(&diffs) {
            let hex = hex_id(&chain)?;
            let size = self
                .dir
                .read(
                    &format!("{driver}/layerdb/sha256/{hex}/size"),
                    SIZE_FILE_LIMIT,
                )
                .ok()?;
            let size = String::from_utf8_lossy(&size).trim().parse::<u64>().ok()?;
            total = total.saturating_add(size);
        }
        Some(total)
    }

    /// Runs an Engine API call if dockerd answers on its socket; `None` if it does not.
    fn with_daemon<T>(
        &self,
        call: impl AsyncFnOnce(&bollard::Docker) -> Result<T, bollard::errors::Error>,
    ) -> Option<Result<T, StoreError>> {
        if !self.socket.exists() {
            return None;
        }
        let socket = self.socket.display().to_string();
        let answered = daemon::block_on(async move {
            let docker =
                bollard::Docker::connect_with_unix(&socket, 30, bollard::API_DEFAULT_VERSION)
                    .ok()?;
            docker.ping().await.ok()?;
            // dockerd 20.10 speaks API 1.41: use what the daemon offers
            let docker = docker.negotiate_version().await.ok()?;
            Some(call(&docker).await.map_err(|e| daemon_error(&socket, e)))
        });
        answered.transpose().map(|r| r.and_then(|called| called))
    }

    /// (name, image ID) of every entry of every driver's repositories.json: what
    /// the writes need to know, without reading configs or layers.
    fn entries(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for driver in &self.drivers {
            let Ok(repos) = self.read_repositories(driver) else {
                continue;
            };
            for (_, refs) in repos
                .get("Repositories")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                for (name, target) in refs.as_object().into_iter().flatten() {
                    if let Some(id) = target.as_str() {
                        out.push((name.clone(), id.to_string()));
                    }
                }
            }
        }
        out
    }

    /// The image `tag` names, per repositories.json.
    fn image_of(&self, tag: &TagRef) -> Option<String> {
        self.entries().into_iter().find_map(|(name, id)| {
            matches!(reference::parse(&name), Ok(Parsed::Tag(t)) if &t == tag).then_some(id)
        })
    }

    /// The tags repositories.json gives the image `id`.
    fn tags_of(&self, id: &str) -> Vec<TagRef> {
        self.entries()
            .into_iter()
            .filter(|(_, i)| i == id)
            .filter_map(|(name, _)| match reference::parse(&name) {
                Ok(Parsed::Tag(t)) => Some(t),
                _ => None,
            })
            .collect()
    }

    /// Edits repositories.json of every driver, with dockerd down, as Docker writes it
    /// (temp file, fsync, rename).
    fn edit_files(
        &self,
        edit: impl Fn(&mut serde_json::Map<String, Value>) -> bool,
    ) -> Result<(), StoreError> {
        let mut changed_any = false;
        for driver in &self.drivers {
            let mut repos = self.read_repositories(driver)?;
            let Some(map) = repos.get_mut("Repositories").and_then(Value::as_object_mut) else {
                continue;
            };
            if !edit(map) {
                continue;
            }
            map.retain(|_, refs| refs.as_object().is_none_or(|r| !r.is_empty()));
            changed_any = true;
            let rel = format!("{driver}/repositories.json");
            let bytes = serde_json::to_vec(&repos).map_err(|e| {
                StoreError::internal(self.dir.display(&rel), format!("cannot serialise: {e}"))
            })?;
            self.dir
                .replace(&rel, &bytes)
                .map_err(|e| StoreError::io(self.dir.display(&rel), e))?;
        }
        if changed_any {
            Ok(())
        } else {
            Err(StoreError::NotFound("no such tag or image".into()))
        }
    }
}

fn daemon_error(socket: &str, e: bollard::errors::Error) -> StoreError {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => {
            let msg = format!("dockerd ({socket}): {message}");
            match status_code {
                404 => StoreError::NotFound(msg),
                409 => StoreError::Busy(msg),
                _ => StoreError::io(msg, io::Error::other(format!("HTTP {status_code}"))),
            }
        }
        other => StoreError::io(
            format!("dockerd ({socket})"),
            io::Error::other(other.to_string()),
        ),
    }
}

/// Removes `tag` from a Repositories map; true if it was there.
fn remove_tag(map: &mut serde_json::Map<String, Value>, tag: &TagRef) -> bool {
    let mut found = false;
    for refs in map.values_mut() {
        if let Some(r) = refs.as_object_mut() {
            let before = r.len();
            r.retain(|name, _| !matches!(reference::parse(name), Ok(Parsed::Tag(t)) if &t == tag));
            found |= r.len() != before;
        }
    }
    found
}

fn insert_tag(map: &mut serde_json::Map<String, Value>, tag: &TagRef, id: &str) {
    let repo = familiar_name(tag);
    let entry = map
        .entry(repo.clone())
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(r) = entry.as_object_mut() {
        r.insert(format!("{repo}:{}", tag.tag), Value::String(id.to_string()));
    }
}

impl Source for DockerRoot {
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
        let mut inv = Inventory::default();
        let mut records: BTreeMap<String, ImageRecord> = BTreeMap::new();
        for driver in &self.drivers {
            let content = format!("{driver}/imagedb/content/sha256");
            let names = match self.dir.entries(&content, MAX_DIR_ENTRIES) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
                Err(e) => {
                    inv.problems.push(e.to_string());
                    vec![]
                }
            };
            for (name, _) in names {
                let id = format!("sha256:{name}");
                let rel = format!("{content}/{name}");
                if hex_id(&id).is_none() {
                    inv.problems.push(format!(
                        "{}: not an image id: ignored",
                        self.dir.display(&rel)
                    ));
                    continue;
                }
                let Ok(Some(meta)) = self.dir.symlink_metadata(&rel) else {
                    continue;
                };
                if !meta.is_file() {
                    inv.problems.push(format!(
                        "{}: not a regular file: ignored",
                        self.dir.display(&rel)
                    ));
                    continue;
                }
                let size = self.layers_size(driver, &rel);
                records.entry(id.clone()).or_insert_with(|| ImageRecord {
                    claimed_id: id.clone(),
                    config_name: self.dir.display(&rel),
                    config: Some(BlobLocation::file(rel, &meta)),
                    layers_size: size,
                    ..Default::default()
                });
            }
            let repos = self.read_repositories(driver)?;
            let empty = serde_json::Map::new();
            let repos = repos
                .get("Repositories")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            for refs in repos.values() {
                for (name, target) in refs.as_object().into_iter().flatten() {
                    let Some(id) = target.as_str().filter(|t| hex_id(t).is_some()) else {
                        inv.problems.push(format!(
                            "{}: {name} names no image id",
                            self.dir.display(&format!("{driver}/repositories.json"))
                        ));
                        continue;
                    };
                    let record = records
                        .entry(id.to_string())
                        .or_insert_with(|| ImageRecord {
                            claimed_id: id.to_string(),
                            config: None,
                            config_name: self.dir.display(&format!(
                                "{content}/{}",
                                id.trim_start_matches("sha256:")
                            )),
                            ..Default::default()
                        });
                    match reference::parse(name) {
                        Ok(Parsed::Tag(t)) => record.tags.push(t),
                        Ok(Parsed::Digest { name, digest }) => {
                            record.digest_refs.push(format!("{name}@{digest}"));
                            if !record.manifest_digests.contains(&digest) {
                                record.manifest_digests.push(digest);
                            }
                        }
                        Ok(Parsed::Id(_)) => {}
                        Err(e) => inv.problems.push(format!(
                            "{}: {e}",
                            self.dir.display(&format!("{driver}/repositories.json"))
                        )),
                    }
                }
            }
        }
        if records.is_empty() {
            warn!(store = %self.root.display(), "no images (with the containerd image store, Docker keeps them in containerd's moby namespace)");
        }
        if records.len() > self.limits.max_images {
            inv.problems.push(
                self.limits
                    .too_many_images(&self.root.display().to_string(), records.len()),
            );
        }
        inv.images = records.into_values().take(self.limits.max_images).collect();
        Ok(inv)
    }

    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        read_file_blob(&self.dir, blob, offset, buf)
    }

    fn repin(&self, blob: &BlobLocation) -> io::Result<BlobLocation> {
        repin_file_blob(&self.dir, blob)
    }

    /// repositories.json's identity and the imagedb directory's: every tag, untag,
    /// load and delete changes one of them.
    fn change_token(&self) -> io::Result<ChangeToken> {
        let mut parts = Vec::new();
        for driver in &self.drivers {
            for rel in [
                format!("{driver}/repositories.json"),
                format!("{driver}/imagedb/content/sha256"),
            ] {
                parts.push(
                    ChangeToken::of_file(&self.dir, &rel)
                        .map(|t| t.0)
                        .unwrap_or_default(),
                );
            }
        }
        Ok(ChangeToken(parts.join("|")))
    }

    /// Docker names every config by its digest and never rewrites one, registers
    /// layers under new directories, and replaces repositories.json by rename: the
    /// identities (ctimes included) of that file and of the two directories move
    /// with every change a scan would read (a config rewritten in place by something
    /// else is caught at read, where every config is hashed).
    fn content_key(&self) -> Option<String> {
        let parts: Vec<String> = self
            .drivers
            .iter()
            .map(|driver| {
                let files = ChangeToken::identities(
                    &self.dir,
                    [
                        format!("{driver}/repositories.json").as_str(),
                        format!("{driver}/imagedb/content/sha256").as_str(),
                        format!("{driver}/layerdb/sha256").as_str(),
                    ],
                );
                format!("{driver}|{files}")
            })
            .collect();
        Some(parts.join("|"))
    }

    /// While dockerd listens, whoever may use its socket may read and tag; with it
    /// stopped, whoever may replace repositories.json.
    fn meta(&self) -> Option<StoreMeta> {
        Some(self.meta.via_socket(&self.socket))
    }

    /// Each driver's repositories.json, and its imagedb's content directory (a load or
    /// a delete adds or removes a file there).
    fn watches(&self) -> Vec<super::Watch> {
        let mut out = Vec::new();
        for driver in &self.drivers {
            for (rel, names) in [
                (driver.clone(), vec!["repositories.json".to_string()]),
                (format!("{driver}/imagedb/content/sha256"), vec![]),
            ] {
                if let Ok(dir) = self.dir.open_dir(&rel, "image directory") {
                    out.push(super::Watch { dir, names });
                }
            }
        }
        out
    }

    fn writer(&self) -> Option<&dyn Writer> {
        Some(self)
    }
}

impl Writer for DockerRoot {
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
impl DockerRoot {
    fn tag(&self, id: &str, tag: &TagRef) -> Result<(), StoreError> {
        let (repo, t) = (tag.name(), tag.tag.clone());
        let daemon = self.with_daemon(async |d| {
            let opts = bollard::query_parameters::TagImageOptionsBuilder::new()
                .repo(&repo)
                .tag(&t)
                .build();
            d.tag_image(id, Some(opts)).await
        });
        match daemon {
            Some(r) => r,
            None => self.edit_files(|map| {
                remove_tag(map, tag);
                insert_tag(map, tag, id);
                true
            }),
        }
    }

    fn untag(&self, tag: &TagRef) -> Result<(), StoreError> {
        let name = tag.to_string();
        if self.socket.exists() {
            // Docker deletes an image with its last tag: refuse that, the image stays
            let owner = self.image_of(tag);
            if let Some(id) = &owner
                && self.tags_of(id).len() <= 1
                && self.with_daemon(async |_| Ok(())).is_some()
            {
                return Err(StoreError::Busy(format!(
                    "{name} is the last tag of {id}: dockerd would delete the image with it (docker rmi {name} does that)"
                )));
            }
        }
        let daemon = self.with_daemon(async |d| {
            let opts = bollard::query_parameters::RemoveImageOptionsBuilder::new()
                .noprune(true)
                .build();
            d.remove_image(&name, Some(opts), None).await.map(|_| ())
        });
        match daemon {
            Some(r) => r,
            None => self.edit_files(|map| remove_tag(map, tag)),
        }
    }

    fn retag(&self, from: &TagRef, to: &TagRef) -> Result<(), StoreError> {
        let id = self
            .image_of(from)
            .ok_or_else(|| StoreError::NotFound(format!("no tag {from}")))?;
        if self.with_daemon(async |_| Ok(())).is_some() {
            // through the daemon: tag, then untag (no longer the last tag)
            self.tag(&id, to)?;
            return self.untag(from);
        }
        self.edit_files(|map| {
            remove_tag(map, to);
            remove_tag(map, from);
            insert_tag(map, to, &id);
            true
        })
    }

    fn delete_image(&self, id: &str) -> Result<(), StoreError> {
        let daemon = self.with_daemon(async |d| {
            d.remove_image(
                id,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
            .map(|_| ())
        });
        match daemon {
            Some(r) => r,
            None => Err(StoreError::NotPermitted(format!(
                "{}: dockerd is not running: deleting an image (its layers are dockerd's) needs it",
                self.root.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_names_like_docker() {
        let t = |s| match reference::parse(s) {
            Ok(Parsed::Tag(t)) => familiar_name(&t),
            _ => panic!(),
        };
        assert_eq!(t("busybox:1"), "busybox");
        assert_eq!(t("user/app:1"), "user/app");
        assert_eq!(t("quay.io/x/y:1"), "quay.io/x/y");
        assert_eq!(t("localhost/whoami/web:1"), "localhost/whoami/web");
    }
}
