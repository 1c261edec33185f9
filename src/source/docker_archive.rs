//! `docker-archive:`: what `docker save` and `podman save` write. Where the
//! docker-save format is parsed.
//!
//! Three layouts, all led by `manifest.json` (a list of {Config, RepoTags, Layers}):
//! - pre-25 Docker: `<id>.json` configs and `<v1id>/layer.tar` layers;
//! - podman: `<id>.json` configs, top-level `<diffid>.tar` layers, and
//!   `<v1id>/layer.tar` symlinks to them;
//! - Docker 25+: an OCI layout (`index.json`, `blobs/sha256/…`) with manifest.json
//!   pointing into blobs/; the OCI index adds the manifest digests.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use serde::Deserialize;

use super::shared::json_limits;
use super::shared::oci_walk::scan_layout;
use super::shared::tar_store::{ArchiveFormat, ArchiveSource, TarArchive, WritePlan};
use super::{
    ArchiveKind, Edit, ImageRecord, Inventory, Kind, Opened, SourceKind, SourceOptions, StoreError,
};
use crate::reference::{self, Parsed, TagRef};

pub static KIND: Kind = Kind {
    prefix: "docker-archive",
    about: "a docker save / podman save tar (plain, gzip or zstd)",
    is_dir_store: None,
    archive: Some(ArchiveKind {
        // Docker 25+ archives carry an OCI index too: manifest.json is what docker
        // load reads, so it decides
        holds: |a| a.has_member("manifest.json"),
        open: |a| Box::new(ArchiveSource::new(a, DockerArchive)),
    }),
    open,
};

/// manifest.json's keys as Docker writes them. Docker reads them in any case (Go's
/// JSON decoding folds case), and so do skopeo and imagefs: jib wrote `config`,
/// `repoTags` and `layers` until 2020.
const ENTRY_KEYS: [&str; 4] = ["Config", "RepoTags", "Layers", "LayerSources"];

/// An entry with its keys in Docker's case. Where an entry has a key in two cases,
/// the exact one is taken, as Go takes it.
fn canonical_keys(entry: Value) -> Value {
    let Value::Object(map) = entry else {
        return entry;
    };
    let mut out = serde_json::Map::new();
    let mut folded = Vec::new();
    for (k, v) in map {
        match ENTRY_KEYS.iter().find(|c| c.eq_ignore_ascii_case(&k)) {
            Some(c) if *c != k => folded.push((c.to_string(), v)),
            _ => {
                out.insert(k, v);
            }
        }
    }
    for (k, v) in folded {
        out.entry(k).or_insert(v);
    }
    Value::Object(out)
}

/// manifest.json's entries, at most `max`, keys in Docker's case.
fn read_entries(a: &TarArchive) -> Result<json_limits::Limited<Value>, StoreError> {
    let limits = a.limits();
    let bytes = a.read_member("manifest.json", limits.max_index_size)?;
    let mut listed = json_limits::list::<Value>(&bytes, limits.max_images).map_err(|e| {
        StoreError::format(
            a.member_display("manifest.json"),
            format!("not a valid docker-save manifest: {e}"),
        )
    })?;
    listed.items = listed.items.into_iter().map(canonical_keys).collect();
    Ok(listed)
}

fn open(spec: &str, options: &SourceOptions) -> Result<Vec<Opened>, StoreError> {
    let source = ArchiveSource::open(&super::spec_path(spec), options, DockerArchive)?;
    Ok(vec![Opened::one(source)])
}

/// A manifest.json entry, its keys read in any case ([`ENTRY_KEYS`]), straight from
/// the bytes: a manifest of 250,000 entries is not held as JSON values first.
#[derive(Debug)]
struct ManifestEntry {
    config: String,
    repo_tags: Option<Vec<String>>,
    layers: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for ManifestEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = ManifestEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a manifest.json entry")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ManifestEntry, A::Error> {
                // (value, from the exact key): an exact key wins over a folded one
                let mut config: Option<(String, bool)> = None;
                let mut repo_tags: Option<(Option<Vec<String>>, bool)> = None;
                let mut layers: Option<(Option<Vec<String>>, bool)> = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let Some(canonical) = ENTRY_KEYS.iter().find(|c| c.eq_ignore_ascii_case(&key))
                    else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    };
                    let exact = *canonical == key;
                    let keep = |had: Option<bool>| had.is_none_or(|was_exact| exact || !was_exact);
                    match *canonical {
                        "Config" => {
                            let v: String = map.next_value()?;
                            if keep(config.as_ref().map(|c| c.1)) {
                                config = Some((v, exact));
                            }
                        }
                        "RepoTags" => {
                            let v: Option<Vec<String>> = map.next_value()?;
                            if keep(repo_tags.as_ref().map(|c| c.1)) {
                                repo_tags = Some((v, exact));
                            }
                        }
                        "Layers" => {
                            let v: Option<Vec<String>> = map.next_value()?;
                            if keep(layers.as_ref().map(|c| c.1)) {
                                layers = Some((v, exact));
                            }
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(ManifestEntry {
                    config: config
                        .ok_or_else(|| serde::de::Error::missing_field("Config"))?
                        .0,
                    repo_tags: repo_tags.and_then(|t| t.0),
                    layers: layers.and_then(|l| l.0),
                })
            }
        }
        d.deserialize_map(Entry)
    }
}

/// The docker-save format, over the shared tar store.
pub struct DockerArchive;

/// The config digest a manifest.json `Config` path names: `<hex>.json` (Docker < 25,
/// podman) or `blobs/sha256/<hex>` (Docker 25+). Empty when it names none.
fn id_in_name(config_path: &str) -> String {
    let base = config_path.rsplit('/').next().unwrap_or(config_path);
    let hex = base.strip_suffix(".json").unwrap_or(base);
    let id = format!("sha256:{hex}");
    if reference::is_digest(&id) {
        id
    } else {
        String::new()
    }
}

impl ArchiveFormat for DockerArchive {
    fn kind(&self) -> SourceKind {
        &KIND
    }

    fn scan(&self, a: &TarArchive) -> Result<Inventory, StoreError> {
        let limits = a.limits();
        let bytes = a.read_member("manifest.json", limits.max_index_size)?;
        let listed =
            json_limits::list::<ManifestEntry>(&bytes, limits.max_images).map_err(|e| {
                StoreError::format(
                    a.member_display("manifest.json"),
                    format!("not a valid docker-save manifest: {e}"),
                )
            })?;
        let mut inv = Inventory {
            problems: a.index.problems.clone(),
            ..Default::default()
        };
        if listed.truncated() {
            inv.problems
                .push(limits.too_many_images(&a.member_display("manifest.json"), listed.total));
        }
        let entries = listed.items;
        // Entries naming one config are one record: a manifest.json repeating a
        // config a million times holds one record, not a million.
        let mut by_config: HashMap<&str, usize> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let what = a.member_display(&format!("manifest.json entry {i}"));
            if let Some(&at) = by_config.get(entry.config.as_str()) {
                for name in entry.repo_tags.iter().flatten() {
                    inv.images[at].add_name(name, &what, &mut inv.problems);
                }
                continue;
            }
            by_config.insert(&entry.config, inv.images.len());
            let config_name = a.member_display(&entry.config);
            let config = a.location(&entry.config);
            if config.is_none() {
                inv.problems.push(format!(
                    "{what}: config {:?} is not in the archive (or is an unsafe name)",
                    entry.config
                ));
            }
            // the ID is the config's content, as docker load computes it: its name
            // is no claim (a misnamed member is said by the catalog, which hashes it)
            let mut record = ImageRecord {
                named_id: id_in_name(&entry.config),
                config,
                config_name,
                ..Default::default()
            };
            let mut size = 0u64;
            for layer in entry.layers.iter().flatten() {
                match a.location(layer) {
                    Some(loc) => size += loc.size(),
                    None => inv
                        .problems
                        .push(format!("{what}: layer {layer:?} is not in the archive")),
                }
            }
            record.layers_size = Some(size);
            for name in entry.repo_tags.iter().flatten() {
                record.add_name(name, &what, &mut inv.problems);
            }
            inv.images.push(record);
        }
        // Docker 25+: the OCI index beside manifest.json knows the manifest digests.
        if a.has_member("index.json") {
            add_manifest_digests(a, &mut inv);
        }
        Ok(inv)
    }

    fn plan(&self, a: &TarArchive, edit: &Edit<'_>) -> Result<WritePlan, StoreError> {
        plan(a, edit)
    }
}

fn add_manifest_digests(a: &TarArchive, inv: &mut Inventory) {
    {
        let layout = match scan_layout(a) {
            Ok(l) => l,
            Err(e) => {
                inv.problems
                    .push(format!("{e} (manifest digests are not shown)"));
                return;
            }
        };
        let mut by_id: HashMap<&str, &ImageRecord> = HashMap::new();
        for r in &layout.images {
            by_id.entry(r.expected_id()).or_insert(r);
        }
        for record in &mut inv.images {
            if let Some(oci) = by_id.get(record.expected_id()) {
                record.manifest_digests = oci.manifest_digests.clone();
                record.other_platforms = oci.other_platforms.clone();
            }
        }
    }
}

/// Plans an edit: new manifest.json (and `repositories`, and for Docker 25+ the OCI
/// index.json, kept in step), and for a delete the members no other image uses.
fn plan(a: &TarArchive, edit: &Edit<'_>) -> Result<WritePlan, StoreError> {
    let limits = a.limits();
    let listed = read_entries(a)?;
    // a write rewrites every entry: one over the bound is not written
    if listed.truncated() {
        return Err(StoreError::Unsupported(format!(
            "{}: not written",
            limits.too_many_images(&a.member_display("manifest.json"), listed.total)
        )));
    }
    let mut entries = listed.items;
    let ids: Vec<String> = entries.iter().map(|e| entry_id(a, e)).collect();
    let mut repositories: Option<serde_json::Map<String, Value>> = a
        .read_member("repositories", limits.max_index_size)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut drop = HashSet::new();
    let not_found = |what: String| StoreError::NotFound(format!("{}: {what}", a.path().display()));
    match edit {
        Edit::Untag(tag) => {
            if !remove_tag(&mut entries, tag) {
                return Err(not_found(format!("no tag {tag}")));
            }
            set_repository(&mut repositories, tag, None);
        }
        Edit::Tag { id, tag } => {
            let i = ids
                .iter()
                .position(|x| x == id)
                .ok_or_else(|| not_found(format!("no image {id}")))?;
            remove_tag(&mut entries, tag);
            push_tag(&mut entries[i], tag);
            set_repository(&mut repositories, tag, top_layer_v1_id(&entries[i]));
        }
        Edit::Retag { from, to } => {
            let Some(i) = entries
                .iter()
                .position(|e| repo_tags(e).any(|t| &t == *from))
            else {
                return Err(not_found(format!("no tag {from}")));
            };
            remove_tag(&mut entries, to);
            remove_tag(&mut entries, from);
            push_tag(&mut entries[i], to);
            set_repository(&mut repositories, from, None);
            set_repository(&mut repositories, to, top_layer_v1_id(&entries[i]));
        }
        Edit::Delete(id) => {
            let i = ids
                .iter()
                .position(|x| x == id)
                .ok_or_else(|| not_found(format!("no image {id}")))?;
            if let Some(t) = repo_tags(&entries[i]).next() {
                return Err(StoreError::Busy(format!(
                    "{}: image {id} is still tagged {t}",
                    a.path().display()
                )));
            }
            let gone = entries.remove(i);
            drop = unshared_members(a, &gone, &entries);
        }
    }
    let mut plan = WritePlan::default();
    if let Some(repos) = repositories {
        plan.updates
            .push(("repositories".into(), to_json(&Value::Object(repos))?));
    }
    // Docker 25+: the OCI index names the same images.
    if a.has_member("index.json") {
        match super::oci_archive::plan_index_edit(a, edit) {
            Ok(p) => {
                plan.updates.extend(p.updates);
                drop.extend(p.drop);
            }
            // the index may not list every image manifest.json does
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    // manifest.json last: it is what loaders read, so it switches last
    plan.updates
        .push(("manifest.json".into(), to_json(&Value::Array(entries))?));
    plan.drop = drop;
    Ok(plan)
}

fn to_json(v: &Value) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v)
        .map_err(|e| StoreError::internal("manifest.json", format!("cannot serialise: {e}")))
}

/// The ID of a manifest.json entry, as the scan shows it: the hash of its config
/// member, else (missing) what its Config path names.
fn entry_id(a: &TarArchive, entry: &Value) -> String {
    let config = entry
        .get("Config")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match a.read_member(config, a.limits().max_config_size) {
        Ok(b) => super::sha256_id(&b),
        Err(_) => id_in_name(config),
    }
}

fn repo_tags(entry: &Value) -> impl Iterator<Item = TagRef> + '_ {
    entry
        .get("RepoTags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| match reference::parse(v.as_str()?) {
            Ok(Parsed::Tag(t)) => Some(t),
            _ => None,
        })
}

/// Removes `tag` (in any spelling) from every entry; true if one had it.
fn remove_tag(entries: &mut [Value], tag: &TagRef) -> bool {
    let mut found = false;
    for e in entries.iter_mut() {
        if let Some(tags) = e.get_mut("RepoTags").and_then(Value::as_array_mut) {
            let before = tags.len();
            tags.retain(|v| {
                !matches!(v.as_str().map(reference::parse), Some(Ok(Parsed::Tag(ref t))) if t == tag)
            });
            found |= tags.len() != before;
        }
    }
    found
}

fn push_tag(entry: &mut Value, tag: &TagRef) {
    let Some(obj) = entry.as_object_mut() else {
        return;
    };
    let tags = obj.entry("RepoTags").or_insert(Value::Null);
    if !tags.is_array() {
        *tags = Value::Array(vec![]);
    }
    if let Some(a) = tags.as_array_mut() {
        a.push(Value::String(tag.to_string()));
    }
}

/// The v1 ID the legacy `repositories` file maps a tag to: the top layer's directory.
fn top_layer_v1_id(entry: &Value) -> Option<String> {
    let last = entry.get("Layers")?.as_array()?.last()?.as_str()?;
    let (dir, file) = last.rsplit_once('/')?;
    (file == "layer.tar" && !dir.contains('/')).then(|| dir.to_string())
}

/// Updates the legacy `repositories` file: {repository: {tag: v1 id}}. Keys may be
/// familiar (`busybox`) or canonical names; both spellings of a tag are matched.
fn set_repository(
    repos: &mut Option<serde_json::Map<String, Value>>,
    tag: &TagRef,
    v1: Option<String>,
) {
    let Some(repos) = repos else { return };
    let same_repo = |key: &str| match reference::parse(&format!("{key}:x")) {
        Ok(Parsed::Tag(t)) => t.name() == tag.name(),
        _ => false,
    };
    for (key, tags) in repos.iter_mut() {
        if same_repo(key)
            && let Some(t) = tags.as_object_mut()
        {
            t.remove(tag.tag.as_str());
        }
    }
    repos.retain(|_, tags| tags.as_object().is_none_or(|t| !t.is_empty()));
    if let Some(v1) = v1 {
        let key = repos
            .keys()
            .find(|k| same_repo(k))
            .cloned()
            .unwrap_or_else(|| tag.name());
        let entry = repos
            .entry(key)
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(t) = entry.as_object_mut() {
            t.insert(tag.tag.to_string(), Value::String(v1));
        }
    }
}

/// The members only the deleted entry used: its config, its layers (and the links
/// and targets they go through), and the legacy `<v1id>/` directories of those layers.
fn unshared_members(a: &TarArchive, gone: &Value, remaining: &[Value]) -> HashSet<String> {
    let names_of = |e: &Value| -> Vec<String> {
        let config = e.get("Config").and_then(Value::as_str).map(str::to_string);
        let layers = e
            .get("Layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string));
        config.into_iter().chain(layers).collect()
    };
    let closure = |names: Vec<String>| -> HashSet<String> {
        let mut out = HashSet::new();
        for n in names {
            let Some(n) = crate::tar_index::normalize_member_name(&n) else {
                continue;
            };
            if let Some((target, _)) = a.index.resolve(&n) {
                out.insert(target.to_string());
            }
            out.insert(n);
        }
        out
    };
    let still_used = closure(remaining.iter().flat_map(names_of).collect());
    let mut drop: HashSet<String> = closure(names_of(gone))
        .difference(&still_used)
        .cloned()
        .collect();
    // `<v1id>/layer.tar` that was or pointed at a dropped layer: its whole directory
    let dirs: HashSet<String> = a
        .index
        .entries()
        .iter()
        .filter_map(|(name, _)| {
            let dir = name.strip_suffix("/layer.tar")?;
            let target = a.index.resolve(name).map(|(t, _)| t.to_string());
            let dropped = drop.contains(name) || target.is_some_and(|t| drop.contains(&t));
            let dir_still_used = still_used.iter().any(|k| k.starts_with(&format!("{dir}/")));
            (dropped && !dir_still_used).then(|| dir.to_string())
        })
        .collect();
    for (name, _) in a.index.entries() {
        if dirs
            .iter()
            .any(|d| name == d || name.starts_with(&format!("{d}/")))
        {
            drop.insert(name.clone());
        }
    }
    drop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_give_ids() {
        let hex = "a".repeat(64);
        assert_eq!(id_in_name(&format!("{hex}.json")), format!("sha256:{hex}"));
        assert_eq!(
            id_in_name(&format!("blobs/sha256/{hex}")),
            format!("sha256:{hex}")
        );
        assert_eq!(id_in_name("config.json"), "");
    }

    #[test]
    fn manifest_keys_are_read_in_any_case_and_the_exact_one_wins() {
        let jib: Value = serde_json::from_str(
            r#"{"config": "c.json", "repoTags": ["a:1"], "LAYERS": ["l.tar"], "Other": 1}"#,
        )
        .unwrap();
        let e = canonical_keys(jib);
        assert_eq!(e["Config"], "c.json");
        assert_eq!(e["RepoTags"][0], "a:1");
        assert_eq!(e["Layers"][0], "l.tar");
        assert_eq!(e["Other"], 1);
        assert!(e.get("config").is_none());
        let both: Value =
            serde_json::from_str(r#"{"config": "lower.json", "Config": "exact.json"}"#).unwrap();
        assert_eq!(canonical_keys(both)["Config"], "exact.json");
        let entry: ManifestEntry = serde_json::from_value(e).unwrap();
        assert_eq!(entry.config, "c.json");
        // read straight from the bytes, in any case, the exact key winning
        let entry: ManifestEntry = serde_json::from_str(
            r#"{"Config": "exact.json", "CONFIG": "folded.json", "repotags": ["b:1"], "x": {}}"#,
        )
        .unwrap();
        assert_eq!(entry.config, "exact.json");
        assert_eq!(entry.repo_tags, Some(vec!["b:1".to_string()]));
        let entry: ManifestEntry =
            serde_json::from_str(r#"{"config": "folded.json", "Config": "exact.json"}"#).unwrap();
        assert_eq!(entry.config, "exact.json");
        assert!(serde_json::from_str::<ManifestEntry>(r#"{"RepoTags": []}"#).is_err());
    }
}
