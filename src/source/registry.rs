//! `registry:`: an OCI distribution registry as one store. `registry:HOST[:PORT]/REPO`
//! is one repository; `registry:HOST[:PORT]/PREFIX/` every repository the catalog API
//! lists under the prefix, and `registry:HOST[:PORT]` all of them, in one tree (one
//! by-id, each repository's tags under by-tag/HOST/…), so that `ln` may tag an image
//! into another repository of the registry. Where the distribution protocol is spoken.
//!
//! A scan lists the tags (paged by `n=` and `Link`), fetches each tag's manifest (with
//! the OCI and Docker media types in `Accept`), resolves indexes to the host platform
//! through the same descriptor walk as every OCI store, and fetches each distinct
//! config once, in parallel, verified against its digest. Nothing but configs and
//! manifests is ever read: layers stay in the registry.
//!
//! The change token is the digest of every (repository, tag, manifest digest), polled
//! by a thread of the store's own every `registry_refresh`, so that asking for it
//! never waits on the network.

mod client;
mod credentials;
mod proxy;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use lru::LruCache;
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};
use ureq::http::Method;

pub use client::RegistryOptions;
use client::{Client, Reply};
pub use proxy::Proxies as RegistryProxies;

use super::shared::oci_walk::{
    Descriptor, LayoutBlobs, MANIFEST_LIMIT, Platform, missing_blob_name, resolve_record,
};
use super::{
    BlobLocation, ChangeToken, Edit, ImageRecord, Inventory, Kind, Opened, Source, SourceKind,
    SourceOptions, StoreError, StoreMeta, Writer,
};
use crate::kept::KeptKind;
use crate::limits::Limits;
use crate::reference::{self, TagRef};

pub static KIND: Kind = Kind {
    prefix: "registry",
    about: "an OCI distribution registry: HOST[:PORT]/REPO, HOST/PREFIX/ (every repository under it), or HOST",
    is_dir_store: None,
    archive: None,
    open,
};

/// The media types a manifest is asked for in, the image ones first.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Tags and repositories asked for per page.
const PAGE: usize = 1000;

/// What a `registry:` spec names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Repository(String),
    /// Every repository under this prefix (`""`: all of them).
    Prefix(String),
}

fn parse_spec(spec: &str) -> Result<(String, Target), StoreError> {
    let bad = |why: &str| {
        StoreError::unsupported(format!(
            "registry:{spec}: {why} (registry:HOST[:PORT]/REPO, registry:HOST/PREFIX/ or registry:HOST)"
        ))
    };
    let spec = spec.strip_prefix("//").unwrap_or(spec);
    let (host, rest) = spec.split_once('/').unwrap_or((spec, ""));
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@' || c == '?') {
        return Err(bad("no registry host"));
    }
    if rest.is_empty() || rest.ends_with('/') {
        let prefix = rest.trim_end_matches('/');
        if !prefix.is_empty() && !reference::is_repository_path(prefix) {
            return Err(bad("not a repository prefix"));
        }
        return Ok((host.to_string(), Target::Prefix(prefix.to_string())));
    }
    if !reference::is_repository_path(rest) {
        return Err(bad("not a repository name (lowercase, no tag)"));
    }
    Ok((host.to_string(), Target::Repository(rest.to_string())))
}

fn open(spec: &str, options: &SourceOptions) -> Result<Vec<Opened>, StoreError> {
    let (host, target) = parse_spec(spec)?;
    let registry = Registry::open(&host, target, options)?;
    // a whole registry or a prefix must list its repositories now: a refused catalog
    // is said before mounting, with what to do instead
    if let Target::Prefix(p) = &registry.inner.target {
        let found = catalog(&registry.inner.client, &host, p, &options.limits)?;
        if found.is_empty() {
            return Err(StoreError::NotFound(format!(
                "{}: no repository in its catalog",
                registry.inner.describe()
            )));
        }
        *registry.inner.first_catalog.lock() = Some(found);
    }
    Ok(vec![Opened::one(registry)])
}

/// The repositories the catalog API lists under `prefix` (`""`: all).
fn catalog(
    client: &Client,
    host: &str,
    prefix: &str,
    limits: &Limits,
) -> Result<Vec<String>, StoreError> {
    let mut repos = Vec::new();
    let mut next = Some(format!("/v2/_catalog?n={PAGE}"));
    while let Some(path) = next {
        let reply = client.request(
            Method::GET,
            &path,
            &[],
            None,
            "registry:catalog:*",
            limits.max_index_size,
        )?;
        if !reply.ok() {
            return Err(StoreError::NotPermitted(format!(
                "registry {host}: the catalog API is refused ({}{}): name the repositories, as registry:{host}/REPO",
                reply.status,
                registry_message(&reply)
            )));
        }
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            repositories: Vec<String>,
        }
        let page: Page = serde_json::from_slice(&reply.body).map_err(|e| {
            StoreError::format(
                format!("registry {host}: catalog"),
                format!("not a catalog page: {e}"),
            )
        })?;
        let count = page.repositories.len();
        repos.extend(
            page.repositories
                .into_iter()
                .filter(|r| reference::is_repository_path(r) && under(prefix, r)),
        );
        if repos.len() > limits.max_images {
            return Err(StoreError::format(
                format!("registry {host}: catalog"),
                format!("more than {} repositories", limits.max_images),
            ));
        }
        next = if count == 0 {
            None
        } else {
            next_page(&reply, &path)
        };
    }
    repos.sort();
    repos.dedup();
    Ok(repos)
}

/// Is repository `repo` under `prefix` (`""`: every repository)?
fn under(prefix: &str, repo: &str) -> bool {
    prefix.is_empty() || repo == prefix || repo.starts_with(&format!("{prefix}/"))
}

/// The next page a `Link: <…>; rel="next"` names, resolved against the request's
/// path; only a path on the same registry is followed.
fn next_page(reply: &Reply, path: &str) -> Option<String> {
    let link = reply.header("link")?;
    for part in link.split(',') {
        let (target, params) = part.split_once(';').unwrap_or((part, ""));
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            continue;
        }
        let target = target.trim().trim_start_matches('<').trim_end_matches('>');
        if target.starts_with('/') {
            return Some(target.to_string());
        }
        if let Some(rest) = target
            .strip_prefix("https://")
            .or_else(|| target.strip_prefix("http://"))
        {
            // an absolute link is followed only on the same host
            return rest.find('/').map(|i| rest[i..].to_string());
        }
        if target.starts_with('?') {
            let base = path.split('?').next().unwrap_or(path);
            return Some(format!("{base}{target}"));
        }
        let base = path.rsplit_once('/').map_or("", |(b, _)| b);
        return Some(format!("{base}/{target}"));
    }
    None
}

/// The registry's own words for an error answer: `: MANIFEST_UNKNOWN manifest unknown`.
fn registry_message(reply: &Reply) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Errors>(&reply.body) {
        Ok(e) if !e.errors.is_empty() => {
            let words: Vec<String> = e
                .errors
                .iter()
                .take(3)
                .map(|i| format!("{} {}", i.code, i.message).trim().to_string())
                .collect();
            // a registry's words, shown in a log line: no control characters
            let words = words.join("; ");
            format!(
                ": {}",
                words
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect::<String>()
            )
        }
        _ => String::new(),
    }
}

/// Runs `f` over `items` on at most `n` threads; the results in the items' order.
fn parallel<T: Sync, R: Send>(items: &[T], n: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|s| {
        for _ in 0..n.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    done.lock().push((i, r));
                }
            });
        }
    });
    let mut done = done.into_inner();
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A tag's manifest as the registry served it.
#[derive(Clone, Debug)]
struct Served {
    digest: String,
    media_type: String,
    /// What the bytes hash to, when that is not `digest`: the tag dangles.
    altered: Option<String>,
}

/// A tag of the store: its repository and its name there.
type RepoTag = (String, String);

/// What the last scan saw: each tag's manifest, each top-level manifest's bytes (what
/// `ln` puts under a new tag), and, for each image, a repository and manifest that
/// hold it.
#[derive(Default)]
struct Seen {
    tags: BTreeMap<RepoTag, Served>,
    manifests: HashMap<String, Arc<[u8]>>,
    images: HashMap<String, (String, String)>,
}

struct Inner {
    client: Client,
    host: String,
    target: Target,
    parallel: usize,
    refresh: Duration,
    limits: Limits,
    /// The platform picked from multi-platform indexes.
    platform: Platform,
    seen: Mutex<Seen>,
    /// Manifests and indexes fetched during a scan, by digest.
    fetched: Mutex<HashMap<String, Arc<[u8]>>>,
    /// Verified configs, by digest.
    configs: Mutex<ConfigBytes>,
    /// A repository each config can be fetched from.
    config_repo: Mutex<HashMap<String, String>>,
    token: Mutex<ChangeToken>,
    poller: Mutex<bool>,
    /// Whether the registry deletes a tag by its name (distribution 2.8 deletes only
    /// by digest); learnt at the first `rm`.
    deletes_by_tag: Mutex<Option<bool>>,
    meta: StoreMeta,
    kept: crate::kept::Kept,
    /// The catalog as asked at mount, for the first scan (asked again by later ones).
    first_catalog: Mutex<Option<Vec<String>>>,
}

/// What a registry store keeps between mounts: manifests, what each resolved to, and
/// configs, all named by their digest, so none of it goes stale; only which manifest
/// each tag names is asked for anew (a HEAD per tag).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct KeptState {
    resolved: Vec<KeptResolution>,
    configs: Vec<KeptConfig>,
}

/// A config's digest and bytes.
type KeptConfig = (String, Vec<u8>);

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct KeptResolution {
    digest: String,
    media_type: String,
    manifest: Vec<u8>,
    record: ImageRecord,
    problems: Vec<String>,
}

impl KeptState {
    /// What of a kept state may be used: kept bytes are trusted no more than the
    /// registry's, so configs and manifests must hash to their digest, and a record
    /// may name its config by digest only (a kept file could name any other place).
    fn checked(self, max_config: u64) -> (Vec<KeptConfig>, HashMap<String, KeptResolution>) {
        let configs = self
            .configs
            .into_iter()
            .filter(|(digest, bytes)| {
                (bytes.len() as u64) <= max_config && sha256_of(bytes) == *digest
            })
            .collect();
        let resolved = self
            .resolved
            .into_iter()
            .filter(|r| {
                sha256_of(&r.manifest) == r.digest
                    && match &r.record.config {
                        None => true,
                        Some(BlobLocation::Digest { digest, size }) => {
                            reference::is_digest(digest) && *size <= max_config
                        }
                        Some(_) => false,
                    }
            })
            .map(|r| (r.digest.clone(), r))
            .collect();
        (configs, resolved)
    }
}

/// For the fuzzer: a kept registry state's payload, framed as kept files are,
/// decoded and checked as a mount takes it; how many resolutions may be used.
#[doc(hidden)]
pub fn fuzz_kept_state(payload: &[u8]) -> Result<usize, String> {
    let framed = crate::kept::frame(KeptKind::Registry, payload);
    let (_, state): (String, KeptState) = crate::kept::decode(KeptKind::Registry, &framed)?;
    let (configs, resolved) = state.checked(Limits::default().max_config_size);
    let mut held = ConfigBytes {
        lru: LruCache::unbounded(),
        bytes: 0,
        capacity: 1 << 20,
    };
    for (digest, bytes) in configs {
        held.put(digest, Arc::from(bytes));
    }
    for r in resolved.values() {
        assert!(matches!(
            r.record.config,
            None | Some(BlobLocation::Digest { .. })
        ));
    }
    Ok(resolved.len())
}

/// Kept configs, at most (more are fetched again at the next mount).
const KEPT_CONFIG_BYTES: usize = 256 << 20;

/// Config bytes held for the catalog's reads, bounded by their total size.
struct ConfigBytes {
    lru: LruCache<String, Arc<[u8]>>,
    bytes: usize,
    capacity: usize,
}

impl ConfigBytes {
    fn get(&mut self, digest: &str) -> Option<Arc<[u8]>> {
        self.lru.get(digest).cloned()
    }

    fn put(&mut self, digest: String, bytes: Arc<[u8]>) {
        if bytes.len() > self.capacity {
            return;
        }
        self.bytes += bytes.len();
        if let Some(old) = self.lru.put(digest, bytes) {
            self.bytes -= old.len();
        }
        while self.bytes > self.capacity {
            match self.lru.pop_lru() {
                Some((_, b)) => self.bytes -= b.len(),
                None => break,
            }
        }
    }
}

pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    fn open(host: &str, target: Target, options: &SourceOptions) -> Result<Registry, StoreError> {
        let scope = match &target {
            Target::Repository(r) | Target::Prefix(r) => r.as_str(),
        };
        let creds = credentials::find(
            &options.registry.auth_files,
            host,
            scope,
            options.registry.timeout,
        );
        let has_creds = creds.is_some();
        let client = Client::new(host, &options.registry, creds)?;
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Ok(Registry {
            inner: Arc::new(Inner {
                client,
                host: host.to_string(),
                target,
                parallel: options.registry.parallel.max(1),
                refresh: options.registry.refresh,
                limits: options.limits,
                platform: options.platform(),
                seen: Mutex::new(Seen::default()),
                fetched: Mutex::new(HashMap::new()),
                configs: Mutex::new(ConfigBytes {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                    capacity: options.registry.config_bytes,
                }),
                config_repo: Mutex::new(HashMap::new()),
                token: Mutex::new(ChangeToken(String::new())),
                poller: Mutex::new(false),
                deletes_by_tag: Mutex::new(None),
                // The mounting user's, as the credentials are: with credentials, no
                // one else may read through the mount what they open.
                meta: StoreMeta {
                    uid,
                    gid,
                    mode: if has_creds { 0o600 } else { 0o644 },
                    mtime: SystemTime::now(),
                    via_daemon: true,
                },
                kept: options.kept.clone(),
                first_catalog: Mutex::new(None),
            }),
        })
    }
}

fn pull(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

fn push(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

impl Inner {
    fn describe(&self) -> String {
        match &self.target {
            Target::Repository(r) => format!("registry:{}/{r}", self.host),
            Target::Prefix(p) if p.is_empty() => format!("registry:{}", self.host),
            Target::Prefix(p) => format!("registry:{}/{p}/", self.host),
        }
    }

    /// The repositories of the store now: the one named, or the catalog's.
    fn repositories(&self) -> Result<Vec<String>, StoreError> {
        match &self.target {
            Target::Repository(r) => Ok(vec![r.clone()]),
            Target::Prefix(p) => match self.first_catalog.lock().take() {
                Some(repos) => Ok(repos),
                None => catalog(&self.client, &self.host, p, &self.limits),
            },
        }
    }

    fn refused(&self, what: &str, reply: &Reply) -> StoreError {
        let why = format!(
            "{}: {what}: {}{}",
            self.describe(),
            reply.status,
            registry_message(reply)
        );
        match reply.status {
            401 | 403 => StoreError::NotPermitted(why),
            404 => StoreError::NotFound(why),
            405 => StoreError::Unsupported(why),
            _ => StoreError::io(
                self.describe(),
                io::Error::other(format!(
                    "{what}: {}{}",
                    reply.status,
                    registry_message(reply)
                )),
            ),
        }
    }

    /// Every tag of a repository, page by page.
    fn list_tags(&self, repo: &str) -> Result<Vec<String>, StoreError> {
        let mut tags = Vec::new();
        let mut next = Some(format!("/v2/{repo}/tags/list?n={PAGE}"));
        let mut pages = 0;
        while let Some(path) = next {
            pages += 1;
            let reply = self.client.request(
                Method::GET,
                &path,
                &[],
                None,
                &pull(repo),
                self.limits.max_index_size,
            )?;
            if reply.status == 404 {
                // a repository with no tags yet (or none at all): nothing to show
                debug!("{}: no repository {repo}: no tags", self.describe());
                return Ok(tags);
            }
            if !reply.ok() {
                return Err(self.refused(&format!("tags list of {repo}"), &reply));
            }
            #[derive(serde::Deserialize)]
            struct Page {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let page: Page = serde_json::from_slice(&reply.body).map_err(|e| {
                StoreError::format(
                    format!("{}: tags list of {repo}", self.describe()),
                    format!("not a tags page: {e}"),
                )
            })?;
            let page = page.tags.unwrap_or_default();
            let empty = page.is_empty();
            tags.extend(page);
            if tags.len() > self.limits.max_images.saturating_mul(4) || pages > 100_000 {
                break;
            }
            next = if empty {
                None
            } else {
                next_page(&reply, &path)
            };
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// `GET` or `HEAD` of `/v2/REPO/manifests/REFERENCE` (a tag or a digest), with
    /// every manifest type in `Accept`.
    fn ask_manifest(
        &self,
        method: Method,
        repo: &str,
        reference: &str,
    ) -> Result<Reply, StoreError> {
        let limit = if method == Method::HEAD {
            0
        } else {
            MANIFEST_LIMIT
        };
        self.client.request(
            method,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", ACCEPT)],
            None,
            &pull(repo),
            limit,
        )
    }

    /// A tag's manifest: its digest (as served, else of its bytes), media type and
    /// bytes.
    fn fetch_tag(&self, repo: &str, tag: &str) -> Result<(Served, Arc<[u8]>), StoreError> {
        let reply = self.ask_manifest(Method::GET, repo, tag)?;
        if !reply.ok() {
            return Err(self.refused(&format!("manifest of {repo}:{tag}"), &reply));
        }
        let digest = match reply.header("docker-content-digest") {
            Some(d) if reference::is_digest(d) => d.to_string(),
            _ => sha256_of(&reply.body),
        };
        let media_type = reply
            .header("content-type")
            .map(|t| t.split(';').next().unwrap_or(t).trim().to_string())
            .unwrap_or_default();
        let actual = sha256_of(&reply.body);
        let altered = (digest.starts_with("sha256:") && actual != digest).then_some(actual);
        Ok((
            Served {
                digest,
                media_type,
                altered,
            },
            Arc::from(reply.body),
        ))
    }

    /// A tag's manifest digest, by HEAD.
    fn head_tag(&self, repo: &str, tag: &str) -> Result<Option<String>, StoreError> {
        let reply = self.ask_manifest(Method::HEAD, repo, tag)?;
        match reply.status {
            404 => Ok(None),
            s if (200..300).contains(&s) => Ok(reply
                .header("docker-content-digest")
                .filter(|d| reference::is_digest(d))
                .map(str::to_string)),
            _ => Err(self.refused(&format!("HEAD of {repo}:{tag}"), &reply)),
        }
    }

    /// A manifest or index by digest, from `repo`.
    fn manifest(&self, repo: &str, digest: &str) -> Result<Arc<[u8]>, StoreError> {
        if let Some(b) = self.fetched.lock().get(digest) {
            return Ok(b.clone());
        }
        let reply = self.ask_manifest(Method::GET, repo, digest)?;
        if !reply.ok() {
            return Err(self.refused(&format!("manifest {digest} of {repo}"), &reply));
        }
        let bytes: Arc<[u8]> = Arc::from(reply.body);
        self.fetched
            .lock()
            .insert(digest.to_string(), bytes.clone());
        Ok(bytes)
    }

    fn fetch_config(&self, digest: &str) -> Result<Arc<[u8]>, StoreError> {
        if let Some(b) = self.configs.lock().get(digest) {
            return Ok(b);
        }
        let name = format!("{}: config {digest}", self.describe());
        let repo = self
            .config_repo
            .lock()
            .get(digest)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("{name}: in no repository seen")))?;
        let reply = self.client.request(
            Method::GET,
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            None,
            &pull(&repo),
            self.limits.max_config_size,
        )?;
        if !reply.ok() {
            return Err(self.refused(&format!("config {digest} of {repo}"), &reply));
        }
        let actual = sha256_of(&reply.body);
        if digest.starts_with("sha256:") && actual != digest {
            warn!("{name}: the registry served bytes that hash to {actual}: not shown");
            return Err(StoreError::format(
                name,
                format!("content hashes to {actual}, not to its name"),
            ));
        }
        let bytes: Arc<[u8]> = Arc::from(reply.body);
        self.configs.lock().put(digest.to_string(), bytes.clone());
        Ok(bytes)
    }

    fn kept_key(&self) -> String {
        format!(
            "{}\n{}\n{:?}\n{}",
            env!("CARGO_PKG_VERSION"),
            self.describe(),
            self.limits,
            self.platform.display()
        )
    }

    /// A tag's manifest, by HEAD when an earlier mount kept the manifest it names;
    /// else fetched.
    fn tag_manifest(
        &self,
        repo: &str,
        tag: &str,
        kept: &HashMap<String, KeptResolution>,
    ) -> Result<(Served, Arc<[u8]>), StoreError> {
        if !kept.is_empty()
            && let Some(digest) = self.head_tag(repo, tag)?
            && let Some(k) = kept.get(&digest)
        {
            return Ok((
                Served {
                    digest,
                    media_type: k.media_type.clone(),
                    altered: None,
                },
                Arc::from(k.manifest.as_slice()),
            ));
        }
        self.fetch_tag(repo, tag)
    }

    /// Every (repository, tag) of the store; a repository whose tags cannot be listed
    /// is a problem of the store's when the store is a prefix, its failure when it is
    /// the store.
    fn all_tags(&self, problems: &mut Vec<String>) -> Result<Vec<RepoTag>, StoreError> {
        let repos = self.repositories()?;
        let listed = parallel(&repos, self.parallel, |r| self.list_tags(r));
        let mut out = Vec::new();
        for (repo, tags) in repos.iter().zip(listed) {
            match tags {
                Ok(tags) => out.extend(tags.into_iter().map(|t| (repo.clone(), t))),
                Err(e) if matches!(self.target, Target::Repository(_)) => return Err(e),
                Err(e) => problems.push(e.to_string()),
            }
        }
        Ok(out)
    }

    /// The token of the (repository, tag) → manifest digest pairs.
    fn token_of<'a>(pairs: impl Iterator<Item = (&'a RepoTag, &'a String)>) -> ChangeToken {
        let mut h = Sha256::new();
        for ((r, t), d) in pairs {
            h.update(format!("{r}:{t} {d}\n").as_bytes());
        }
        ChangeToken(hex::encode(h.finalize()))
    }

    /// Asks the registry what each tag names now; `None` when it does not answer.
    fn poll(&self) -> Option<ChangeToken> {
        let mut problems = Vec::new();
        let tags = match self.all_tags(&mut problems) {
            Ok(t) if problems.is_empty() => t,
            Ok(_) | Err(_) => {
                debug!("{}: not polled: {problems:?}", self.describe());
                return None;
            }
        };
        let digests = parallel(&tags, self.parallel, |(r, t)| self.head_tag(r, t));
        let mut pairs = BTreeMap::new();
        for (rt, d) in tags.into_iter().zip(digests) {
            match d {
                Ok(Some(d)) => {
                    pairs.insert(rt, d);
                }
                Ok(None) => {}
                Err(e) => {
                    debug!("{}: not polled: {e}", self.describe());
                    return None;
                }
            }
        }
        Some(Inner::token_of(pairs.iter()))
    }
}

/// Polls the registry every `refresh` while the store is mounted (the thread ends with
/// the store), so that the change token is there at once when the watcher asks.
fn start_poller(inner: &Arc<Inner>) {
    let mut started = inner.poller.lock();
    if *started {
        return;
    }
    *started = true;
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let refresh = inner.refresh;
    let spawned = crate::threads::spawn_background("registry-poll", move || {
        loop {
            std::thread::sleep(refresh);
            let Some(inner) = weak.upgrade() else { return };
            if let Some(token) = inner.poll() {
                let mut now = inner.token.lock();
                if *now != token {
                    info!("{}: tags changed in the registry", inner.describe());
                    *now = token;
                }
            }
        }
    });
    if let Err(e) = spawned {
        warn!(
            "{}: no poller ({e}): changes in the registry are not shown",
            inner.describe()
        );
    }
}

/// One repository seen as an OCI layout for the descriptor walk: manifests come from
/// its manifests endpoint, configs are named by their descriptor and read only when
/// the catalog asks.
struct RepoView<'a> {
    inner: &'a Inner,
    repo: &'a str,
}

impl LayoutBlobs for RepoView<'_> {
    fn read_file(&self, rel: &str, _limit: u64) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::NotFound(format!(
            "{}: a registry has no {rel}",
            self.inner.describe()
        )))
    }

    fn blob(&self, digest: &str) -> Result<Option<BlobLocation>, StoreError> {
        Ok(Some(BlobLocation::Digest {
            digest: digest.to_string(),
            size: 0,
        }))
    }

    fn read_location(&self, loc: &BlobLocation, _limit: u64) -> Result<Vec<u8>, StoreError> {
        match loc {
            BlobLocation::Digest { digest, .. } => Ok(self.inner.fetch_config(digest)?.to_vec()),
            other => Err(StoreError::internal(
                self.inner.describe(),
                format!("not a registry blob: {other:?}"),
            )),
        }
    }

    fn display(&self, rel: &str) -> String {
        let digest = rel
            .strip_prefix("blobs/sha256/")
            .map(|h| format!("sha256:{h}"));
        format!(
            "registry:{}/{} {}",
            self.inner.host,
            self.repo,
            digest.as_deref().unwrap_or(rel)
        )
    }

    fn bare_tag_repository(&self) -> String {
        format!("{}/{}", self.inner.host, self.repo)
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    fn manifest_bytes(&self, digest: &str, blob_name: &str) -> Result<Vec<u8>, StoreError> {
        match self.inner.manifest(self.repo, digest) {
            Ok(b) => Ok(b.to_vec()),
            Err(StoreError::NotFound(_)) => Err(StoreError::NotFound(format!(
                "{blob_name}: not in the registry"
            ))),
            Err(e) => Err(e),
        }
    }

    fn config_blob(&self, config: &Descriptor) -> Result<Option<BlobLocation>, StoreError> {
        self.inner
            .config_repo
            .lock()
            .entry(config.digest.clone())
            .or_insert_with(|| self.repo.to_string());
        Ok(Some(BlobLocation::Digest {
            digest: config.digest.clone(),
            size: config.size.max(0) as u64,
        }))
    }
}

impl Source for Registry {
    fn kind(&self) -> SourceKind {
        &KIND
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn scan(&self) -> Result<Inventory, StoreError> {
        let inner = &self.inner;
        let mut inv = Inventory::default();
        let mut tags = inner.all_tags(&mut inv.problems)?;
        if tags.len() > inner.limits.max_images {
            inv.problems
                .push(inner.limits.too_many_images(&inner.describe(), tags.len()));
            tags.truncate(inner.limits.max_images);
        }
        inner.fetched.lock().clear();
        let kept: HashMap<String, KeptResolution> = inner
            .kept
            .load::<KeptState>(KeptKind::Registry, &inner.describe(), &inner.kept_key())
            .map(|k| {
                let (configs, resolved) = k.checked(inner.limits.max_config_size);
                let mut held = inner.configs.lock();
                for (digest, bytes) in configs {
                    held.put(digest, Arc::from(bytes));
                }
                resolved
            })
            .unwrap_or_default();
        let served = parallel(&tags, inner.parallel, |(r, t)| {
            inner.tag_manifest(r, t, &kept)
        });
        // tags grouped by the manifest they name: each is resolved once, in the first
        // repository that has it
        let mut by_manifest: BTreeMap<String, (Served, String, Vec<RepoTag>)> = BTreeMap::new();
        let mut seen = Seen::default();
        for ((repo, tag), got) in tags.iter().zip(served) {
            match got {
                Ok((s, _)) if s.altered.is_some() => {
                    // not what its digest names: the tag dangles, at a name saying
                    // that the manifest of that digest is missing
                    let name = format!("{}/{repo}:{tag}", inner.host);
                    warn!(
                        "{}: {repo}:{tag}: manifest {}: content hashes to {}, not to its name: the tag dangles",
                        inner.describe(),
                        s.digest,
                        s.altered.as_deref().unwrap_or_default()
                    );
                    let mut record = ImageRecord {
                        claimed_id: missing_blob_name(&s.media_type, &s.digest),
                        config: None,
                        config_name: format!("{name} manifest {}", s.digest),
                        ..Default::default()
                    };
                    record.add_name(&name, &inner.describe(), &mut inv.problems);
                    inv.images.push(record);
                }
                Ok((s, bytes)) => {
                    inner.fetched.lock().insert(s.digest.clone(), bytes.clone());
                    seen.manifests.insert(s.digest.clone(), bytes);
                    seen.tags.insert((repo.clone(), tag.clone()), s.clone());
                    by_manifest
                        .entry(s.digest.clone())
                        .or_insert_with(|| (s, repo.clone(), Vec::new()))
                        .2
                        .push((repo.clone(), tag.clone()));
                }
                // gone between the list and the fetch: not there
                Err(StoreError::NotFound(e)) => debug!("{e}"),
                Err(e) => inv.problems.push(format!("{repo}:{tag}: {e}")),
            }
        }
        let groups: Vec<(Served, String, Vec<RepoTag>)> = by_manifest.into_values().collect();
        let resolved = parallel(&groups, inner.parallel, |(s, repo, _)| {
            if let Some(k) = kept.get(&s.digest) {
                if let Some(BlobLocation::Digest { digest, .. }) = &k.record.config {
                    inner
                        .config_repo
                        .lock()
                        .entry(digest.clone())
                        .or_insert_with(|| repo.clone());
                }
                return (Ok(k.record.clone()), k.problems.clone());
            }
            let desc = Descriptor {
                media_type: s.media_type.clone(),
                digest: s.digest.clone(),
                size: -1,
                annotations: None,
                platform: None,
            };
            let view = RepoView {
                inner: inner.as_ref(),
                repo,
            };
            resolve_record(
                &view,
                &desc,
                &format!("registry:{}/{repo} manifest {}", inner.host, s.digest),
            )
        });
        let mut configs = Vec::new();
        let mut keep = KeptState::default();
        for ((s, repo, names), (record, problems)) in groups.into_iter().zip(resolved) {
            if let (Ok(r), Some(manifest)) = (&record, seen.manifests.get(&s.digest)) {
                keep.resolved.push(KeptResolution {
                    digest: s.digest.clone(),
                    media_type: s.media_type.clone(),
                    manifest: manifest.to_vec(),
                    record: r.clone(),
                    problems: problems.clone(),
                });
            }
            inv.problems.extend(problems);
            let mut record = record.unwrap_or_else(|missing| ImageRecord {
                // the manifest or its index cannot be followed: its tags dangle
                claimed_id: missing,
                config: None,
                config_name: format!("registry:{}/{repo} manifest {}", inner.host, s.digest),
                ..Default::default()
            });
            if let Some(BlobLocation::Digest { digest, .. }) = &record.config {
                configs.push(digest.clone());
                seen.images
                    .entry(digest.clone())
                    .or_insert_with(|| (repo.clone(), s.digest.clone()));
            }
            for (r, t) in &names {
                let name = format!("{}/{r}:{t}", inner.host);
                record.add_name(&name, &inner.describe(), &mut inv.problems);
            }
            inv.images.push(record);
        }
        configs.sort();
        configs.dedup();
        // The catalog reads each config once, one at a time: fetched here, in
        // parallel, so that its reads find them. A failure is left for its read to say.
        parallel(&configs, inner.parallel, |d| {
            let _ = inner.fetch_config(d);
        });
        if inner.kept.is_on() {
            let mut held = 0;
            let mut cache = inner.configs.lock();
            for d in &configs {
                if let Some(b) = cache.get(d)
                    && held + b.len() <= KEPT_CONFIG_BYTES
                {
                    held += b.len();
                    keep.configs.push((d.clone(), b.to_vec()));
                }
            }
            drop(cache);
            inner.kept.store(
                KeptKind::Registry,
                &inner.describe(),
                &inner.kept_key(),
                &keep,
            );
        }
        inner.fetched.lock().clear();
        *inner.token.lock() = Inner::token_of(seen.tags.iter().map(|(rt, s)| (rt, &s.digest)));
        *inner.seen.lock() = seen;
        start_poller(inner);
        Ok(inv)
    }

    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let BlobLocation::Digest { digest, .. } = blob else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {blob:?} is not a registry blob", self.describe()),
            ));
        };
        let bytes = self
            .inner
            .fetch_config(digest)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(super::shared::blob::copy_at(&bytes, offset, buf))
    }

    fn change_token(&self) -> io::Result<ChangeToken> {
        Ok(self.inner.token.lock().clone())
    }

    fn token_from_scan(&self) -> bool {
        true
    }

    fn meta(&self) -> Option<StoreMeta> {
        Some(self.inner.meta)
    }

    fn writer(&self) -> Option<&dyn Writer> {
        Some(self)
    }
}

/// Nested indexes a cross-repository copy follows, at most.
const MAX_COPY_DEPTH: usize = 4;

impl Inner {
    /// The repository and name of a tag this store may write: in the repository
    /// named, or under the prefix.
    fn own_tag(&self, tag: &TagRef) -> Result<RepoTag, StoreError> {
        let full = tag.to_string();
        let not_here = || {
            StoreError::Unsupported(format!(
                "{}: {full} is not a tag of this store's repositories",
                self.describe()
            ))
        };
        let rest = full
            .strip_prefix(&format!("{}/", self.host))
            .ok_or_else(not_here)?;
        let (repo, t) = rest.rsplit_once(':').ok_or_else(not_here)?;
        let ours = match &self.target {
            Target::Repository(r) => r == repo,
            Target::Prefix(p) => under(p, repo),
        };
        if !ours || t.is_empty() || !reference::is_repository_path(repo) {
            return Err(not_here());
        }
        Ok((repo.to_string(), t.to_string()))
    }

    /// PUTs `bytes` (a manifest of `media_type`) under `reference` (a tag or its
    /// digest) in `repo`.
    fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let content_type = if media_type.is_empty() {
            "application/vnd.oci.image.manifest.v1+json"
        } else {
            media_type
        };
        let reply = self.client.request(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", content_type)],
            Some(bytes),
            &push(repo),
            1 << 20,
        )?;
        if !reply.ok() {
            return Err(self.refused(&format!("PUT {repo}:{reference}"), &reply));
        }
        Ok(())
    }

    fn delete_manifest(&self, repo: &str, reference: &str) -> Result<Reply, StoreError> {
        // distribution asks for the `delete` action: a token of its own
        self.client.request(
            Method::DELETE,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[],
            None,
            &format!("repository:{repo}:delete"),
            1 << 20,
        )
    }

    /// Makes the blobs a manifest (or index) names present in `to`, mounted from
    /// `from` (no byte moves), and an index's manifests PUT there by digest.
    fn copy_into(
        &self,
        from: &str,
        to: &str,
        bytes: &[u8],
        depth: usize,
    ) -> Result<(), StoreError> {
        if depth > MAX_COPY_DEPTH {
            return Err(StoreError::format(
                self.describe(),
                "indexes nested too deep to copy",
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::format(self.describe(), format!("not a manifest: {e}")))?;
        let digest_of = |d: &serde_json::Value| {
            d.get("digest")
                .and_then(|x| x.as_str())
                .filter(|x| reference::is_digest(x))
                .map(str::to_string)
        };
        if let Some(children) = v.get("manifests").and_then(|m| m.as_array()) {
            for child in children {
                let Some(digest) = digest_of(child) else {
                    continue;
                };
                let media_type = child
                    .get("mediaType")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default();
                let child_bytes = self.manifest(from, &digest)?;
                self.copy_into(from, to, &child_bytes, depth + 1)?;
                self.put_manifest(to, &digest, media_type, &child_bytes)?;
            }
            return Ok(());
        }
        let blobs = v
            .get("config")
            .into_iter()
            .chain(
                v.get("layers")
                    .and_then(|l| l.as_array())
                    .into_iter()
                    .flatten(),
            )
            .filter_map(digest_of);
        for digest in blobs {
            self.mount_blob(from, to, &digest)?;
        }
        Ok(())
    }

    /// `POST /v2/TO/blobs/uploads/?mount=DIGEST&from=FROM`: 201 is mounted; a 202 is
    /// an upload the registry started instead, which is cancelled.
    fn mount_blob(&self, from: &str, to: &str, digest: &str) -> Result<(), StoreError> {
        let reply = self.client.request(
            Method::POST,
            &format!("/v2/{to}/blobs/uploads/?mount={digest}&from={from}"),
            &[("Content-Length", "0")],
            Some(&[]),
            &format!("{} {}", push(to), pull(from)),
            1 << 20,
        )?;
        match reply.status {
            201 => Ok(()),
            202 => {
                if let Some(location) = reply.header("location") {
                    let path = location
                        .find("/v2/")
                        .map(|i| location[i..].to_string())
                        .unwrap_or_default();
                    if !path.is_empty() {
                        let _ = self.client.request(
                            Method::DELETE,
                            &path,
                            &[],
                            None,
                            &push(to),
                            1 << 20,
                        );
                    }
                }
                Err(StoreError::Unsupported(format!(
                    "{}: blob {digest} of {from} could not be mounted into {to}: the registry would have it uploaded",
                    self.describe()
                )))
            }
            _ => Err(self.refused(&format!("mount of {digest} from {from} into {to}"), &reply)),
        }
    }

    /// Takes a tag off the registry. By name where the registry can; else by digest,
    /// which takes every tag of that manifest in the repository with it: refused
    /// (EBUSY) while another tag there still names it.
    fn untag(&self, repo: &str, tag: &str) -> Result<(), StoreError> {
        let digest = self.head_tag(repo, tag)?.ok_or_else(|| {
            StoreError::NotFound(format!("{}: no tag {repo}:{tag}", self.describe()))
        })?;
        if *self.deletes_by_tag.lock() != Some(false) {
            let reply = self.delete_manifest(repo, tag)?;
            if reply.ok() {
                *self.deletes_by_tag.lock() = Some(true);
                return Ok(());
            }
            if !matches!(reply.status, 400 | 405) {
                return Err(self.refused(&format!("DELETE {repo}:{tag}"), &reply));
            }
            debug!(
                "{}: deletes only by digest{}",
                self.describe(),
                registry_message(&reply)
            );
            *self.deletes_by_tag.lock() = Some(false);
        }
        let others: Vec<String> = self
            .seen
            .lock()
            .tags
            .iter()
            .filter(|((r, t), s)| r == repo && t != tag && s.digest == digest)
            .map(|((_, t), _)| t.clone())
            .collect();
        for other in others {
            if self.head_tag(repo, &other)?.as_deref() == Some(digest.as_str()) {
                return Err(StoreError::Busy(format!(
                    "{}: {repo}:{tag} is the same manifest as {repo}:{other}, and this registry deletes only by digest, which would take both: rm {other} first",
                    self.describe()
                )));
            }
        }
        let reply = self.delete_manifest(repo, &digest)?;
        if !reply.ok() {
            return Err(self.refused(&format!("DELETE {digest} ({repo}:{tag})"), &reply));
        }
        Ok(())
    }

    /// A repository holding the image, and the manifest (media type, bytes) that
    /// names it there, from the last scan.
    fn manifest_of_image(&self, id: &str) -> Result<(String, String, Arc<[u8]>), StoreError> {
        let seen = self.seen.lock();
        let found = seen.images.get(id).and_then(|(repo, digest)| {
            let media_type = seen
                .tags
                .values()
                .find(|s| &s.digest == digest)
                .map(|s| s.media_type.clone())?;
            Some((
                repo.clone(),
                media_type,
                seen.manifests.get(digest)?.clone(),
            ))
        });
        found.ok_or_else(|| {
            StoreError::NotFound(format!("{}: no manifest for image {id}", self.describe()))
        })
    }

    /// Puts the manifest under (repo, tag), its blobs mounted first when it comes
    /// from another repository.
    fn put_tag(
        &self,
        from: &str,
        (repo, tag): &RepoTag,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        if from != repo {
            self.copy_into(from, repo, bytes, 0)?;
        }
        self.put_manifest(repo, tag, media_type, bytes)
    }
}

impl Writer for Registry {
    fn write(&self, edit: Edit<'_>) -> Result<(), StoreError> {
        let inner = &self.inner;
        match edit {
            Edit::Tag { id, tag } => {
                let to = inner.own_tag(tag)?;
                let (from, media_type, bytes) = inner.manifest_of_image(id)?;
                inner.put_tag(&from, &to, &media_type, &bytes)
            }
            Edit::Untag(tag) => {
                let (repo, t) = inner.own_tag(tag)?;
                inner.untag(&repo, &t)
            }
            Edit::Retag { from, to } => {
                let (fr, f) = inner.own_tag(from)?;
                let to = inner.own_tag(to)?;
                let (served, bytes) = inner.fetch_tag(&fr, &f).map_err(|e| match e {
                    StoreError::NotFound(_) => {
                        StoreError::NotFound(format!("{}: no tag {fr}:{f}", inner.describe()))
                    }
                    other => other,
                })?;
                if fr != to.0 || *inner.deletes_by_tag.lock() == Some(true) {
                    // the new name first: a failure in between leaves both
                    inner.put_tag(&fr, &to, &served.media_type, &bytes)?;
                    return inner.untag(&fr, &f);
                }
                // In one repository, deleting by digest would take the new name too:
                // the old goes first, then the same bytes are put under the new name
                // (the blobs stay).
                inner.untag(&fr, &f)?;
                inner
                    .put_manifest(&to.0, &to.1, &served.media_type, &bytes)
                    .inspect_err(|_| {
                        if let Err(e) = inner.put_manifest(&fr, &f, &served.media_type, &bytes) {
                            warn!("{}: {fr}:{f} could not be put back: {e}", inner.describe());
                        }
                    })
            }
            Edit::Delete(id) => Err(StoreError::NotPermitted(format!(
                "{}: {id}: {}",
                inner.describe(),
                NO_IMAGE_DELETES
            ))),
        }
    }

    fn no_image_deletes(&self) -> Option<String> {
        Some(format!("{}: {NO_IMAGE_DELETES}", self.inner.describe()))
    }
}

const NO_IMAGE_DELETES: &str = "a registry has no untagged images to delete: rm its tags (the registry's own garbage collection removes the blobs)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_state_is_used_only_where_it_hashes_to_its_names() {
        let manifest = br#"{"schemaVersion":2}"#.to_vec();
        let config = br#"{"architecture":"amd64"}"#.to_vec();
        let resolution = |manifest: &[u8], config: Option<BlobLocation>| KeptResolution {
            digest: sha256_of(br#"{"schemaVersion":2}"#),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: manifest.to_vec(),
            record: ImageRecord {
                config,
                ..Default::default()
            },
            problems: vec![],
        };
        let by_digest = BlobLocation::Digest {
            digest: sha256_of(&config),
            size: config.len() as u64,
        };
        let file = BlobLocation::File {
            rel: "../../etc/shadow".into(),
            size: 10,
            pin: Default::default(),
        };
        for (state, usable) in [
            (resolution(&manifest, Some(by_digest.clone())), 1),
            (resolution(b"{}", Some(by_digest)), 0),
            (resolution(&manifest, Some(file)), 0),
            (resolution(&manifest, None), 1),
        ] {
            let kept = KeptState {
                resolved: vec![state],
                configs: vec![
                    (sha256_of(&config), config.clone()),
                    (sha256_of(b"other"), config.clone()),
                ],
            };
            let payload = postcard::to_stdvec(&("key", &kept)).unwrap();
            assert_eq!(fuzz_kept_state(&payload), Ok(usable));
            let (configs, _) = kept.checked(1 << 20);
            assert_eq!(configs.len(), 1, "only the config that hashes to its name");
        }
        assert!(fuzz_kept_state(b"\xff\xff").is_err());
    }

    #[test]
    fn specs_name_a_repository_a_prefix_or_a_whole_registry() {
        assert_eq!(
            parse_spec("127.0.0.1:5000/team/app").unwrap(),
            (
                "127.0.0.1:5000".into(),
                Target::Repository("team/app".into())
            )
        );
        assert_eq!(
            parse_spec("reg.example/team/").unwrap(),
            ("reg.example".into(), Target::Prefix("team".into()))
        );
        assert_eq!(
            parse_spec("reg.example").unwrap(),
            ("reg.example".into(), Target::Prefix(String::new()))
        );
        for bad in [
            "",
            "/x",
            "reg.example/App",
            "reg.example/app:1",
            "reg.example/a b",
            "u@reg/x",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }

    fn reply_with_link(link: &str) -> Reply {
        let mut headers = ureq::http::HeaderMap::new();
        headers.insert("link", link.parse().unwrap());
        Reply {
            status: 200,
            headers,
            body: vec![],
        }
    }

    #[test]
    fn next_pages_resolve_against_the_request() {
        let path = "/v2/app/tags/list?n=1000";
        let r = reply_with_link(r#"</v2/app/tags/list?last=b&n=1000>; rel="next""#);
        assert_eq!(
            next_page(&r, path).unwrap(),
            "/v2/app/tags/list?last=b&n=1000"
        );
        let r = reply_with_link(r#"<?last=b&n=2>; rel="next""#);
        assert_eq!(next_page(&r, path).unwrap(), "/v2/app/tags/list?last=b&n=2");
        let r = reply_with_link(r#"<list?last=c>; rel="next""#);
        assert_eq!(next_page(&r, path).unwrap(), "/v2/app/tags/list?last=c");
        let r = reply_with_link(r#"<https://reg.example/v2/app/tags/list?last=d>; rel="next""#);
        assert_eq!(next_page(&r, path).unwrap(), "/v2/app/tags/list?last=d");
        let r = reply_with_link(r#"</v2/other>; rel="prev""#);
        assert_eq!(next_page(&r, path), None);
    }

    #[test]
    fn parallel_keeps_the_order_and_bounds_the_threads() {
        let items: Vec<u32> = (0..100).collect();
        let live = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let out = parallel(&items, 4, |i| {
            let now = live.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
            live.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(most.load(Ordering::SeqCst) <= 4);
        assert!(parallel(&Vec::<u32>::new(), 4, |i| *i).is_empty());
    }

    #[test]
    fn registry_errors_are_quoted_without_control_characters() {
        let reply = Reply {
            status: 404,
            headers: Default::default(),
            body: br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest\u001b[31m unknown"}]}"#.to_vec(),
        };
        assert_eq!(
            registry_message(&reply),
            ": MANIFEST_UNKNOWN manifest[31m unknown"
        );
    }
}
