//! Edits of an OCI index.json: tag, untag, re-tag and delete, as an OCI layout
//! records them (one index entry per name, the `org.opencontainers.image.ref.name`
//! annotation holding the full reference). Shared by `oci:` (which rewrites
//! index.json) and `oci-archive:` (which rewrites the archive).
//!
//! An image's last entry is never dropped by an untag: its name annotations go and the
//! descriptor stays, so the image stays in by-id as untagged until it is deleted.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use serde_json::Value;

use super::oci_walk::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Descriptor, LayoutBlobs, MANIFEST_LIMIT,
    blob_rel_path, references_of, resolve_descriptor,
};
use crate::reference::TagRef;
use crate::source::{Edit, StoreError};

/// The new index.json, and the descriptors an image deletion removed.
pub struct Edited {
    pub index: Vec<u8>,
    pub removed: Vec<Descriptor>,
}

struct Entry {
    desc: Descriptor,
    tag: Option<TagRef>,
}

pub fn apply(layout: &dyn LayoutBlobs, edit: &Edit<'_>) -> Result<Edited, StoreError> {
    let name = layout.display("index.json");
    let limits = layout.limits();
    let bytes = layout.read_file("index.json", limits.max_index_size)?;
    // Counted before the whole index is held as a JSON tree: a write must see every
    // entry (it rewrites them all), so an index over the bound is not written.
    let counted = super::json_limits::field_list::<serde::de::IgnoredAny>(&bytes, "manifests", 0)
        .map_err(|e| StoreError::format(&name, format!("not a valid OCI index: {e}")))?;
    if let Some(c) = counted
        && c.total > limits.max_images
    {
        return Err(StoreError::Unsupported(format!(
            "{}: not written",
            limits.too_many_images(&name, c.total)
        )));
    }
    let mut index: Value = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::format(&name, format!("not a valid OCI index: {e}")))?;
    let Some(manifests) = index.get_mut("manifests").and_then(Value::as_array_mut) else {
        return Err(StoreError::format(&name, "no \"manifests\" list"));
    };
    let mut sink = Vec::new();
    let entries: Vec<Entry> = manifests
        .iter()
        .map(|v| {
            let desc: Descriptor = serde_json::from_value(v.clone()).unwrap_or_default();
            let (tags, _) = references_of(layout, &desc, &name, &mut sink);
            Entry {
                tag: tags.into_iter().next(),
                desc,
            }
        })
        .collect();
    // One resolution per distinct digest: an index may name one manifest many times.
    let mut resolved: HashMap<String, Option<String>> = HashMap::new();
    for e in &entries {
        if !resolved.contains_key(&e.desc.digest) {
            resolved.insert(e.desc.digest.clone(), resolve_descriptor(layout, &e.desc));
        }
    }
    let resolves_to =
        |e: &Entry, id: &str| resolved.get(&e.desc.digest).and_then(|r| r.as_deref()) == Some(id);
    let mut remove: Vec<bool> = vec![false; entries.len()];
    let mut removed = Vec::new();
    match edit {
        Edit::Untag(tag) => {
            if !entries.iter().any(|e| e.tag.as_ref() == Some(*tag)) {
                return Err(StoreError::NotFound(format!("{name}: no tag {tag}")));
            }
            drop_name(manifests, &entries, &mut remove, tag);
        }
        Edit::Retag { from, to } => {
            if !entries.iter().any(|e| e.tag.as_ref() == Some(*from)) {
                return Err(StoreError::NotFound(format!("{name}: no tag {from}")));
            }
            drop_name(manifests, &entries, &mut remove, to);
            for (i, e) in entries.iter().enumerate() {
                if e.tag.as_ref() == Some(*from) {
                    set_name(&mut manifests[i], Some(to));
                }
            }
        }
        Edit::Tag { id, tag } => {
            let Some(template) = entries.iter().position(|e| resolves_to(e, id)) else {
                return Err(StoreError::NotFound(format!(
                    "{name}: no entry for image {id}"
                )));
            };
            drop_name(manifests, &entries, &mut remove, tag);
            // Reuse the image's unnamed entry, if it has one; else add an entry.
            let unnamed = (0..entries.len()).find(|&i| {
                !remove[i] && resolves_to(&entries[i], id) && name_of(&manifests[i]).is_none()
            });
            match unnamed {
                Some(i) => set_name(&mut manifests[i], Some(tag)),
                None => {
                    let mut entry = manifests[template].clone();
                    if let Some(obj) = entry.as_object_mut() {
                        obj.remove("annotations");
                    }
                    set_name(&mut entry, Some(tag));
                    manifests.push(entry);
                    remove.push(false);
                }
            }
        }
        Edit::Delete(id) => {
            let mine: Vec<usize> = (0..entries.len())
                .filter(|&i| resolves_to(&entries[i], id))
                .collect();
            if mine.is_empty() {
                return Err(StoreError::NotFound(format!(
                    "{name}: no entry for image {id}"
                )));
            }
            if let Some(i) = mine.iter().find(|&&i| entries[i].tag.is_some()) {
                return Err(StoreError::Busy(format!(
                    "{name}: image {id} is still tagged {}",
                    entries[*i]
                        .tag
                        .as_ref()
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                )));
            }
            for i in mine {
                remove[i] = true;
                removed.push(entries[i].desc.clone());
            }
        }
    }
    let mut i = 0;
    manifests.retain(|_| {
        let stays = !remove[i];
        i += 1;
        stays
    });
    let index = serde_json::to_vec(&index)
        .map_err(|e| StoreError::internal(&name, format!("cannot serialise: {e}")))?;
    Ok(Edited { index, removed })
}

fn name_of(entry: &Value) -> Option<&str> {
    let ann = entry.get("annotations")?;
    ann.get(ANNOTATION_CONTAINERD_NAME)
        .or_else(|| ann.get(ANNOTATION_REF_NAME))
        .and_then(Value::as_str)
}

/// Sets (or, with `None`, removes) an entry's name annotations.
fn set_name(entry: &mut Value, tag: Option<&TagRef>) {
    let Some(obj) = entry.as_object_mut() else {
        return;
    };
    let ann = obj
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(ann) = ann.as_object_mut() else {
        return;
    };
    match tag {
        Some(t) => {
            ann.insert(ANNOTATION_REF_NAME.into(), Value::String(t.to_string()));
            if ann.contains_key(ANNOTATION_CONTAINERD_NAME) {
                ann.insert(
                    ANNOTATION_CONTAINERD_NAME.into(),
                    Value::String(t.to_string()),
                );
            }
        }
        None => {
            ann.remove(ANNOTATION_REF_NAME);
            ann.remove(ANNOTATION_CONTAINERD_NAME);
        }
    }
    if ann.is_empty() {
        obj.remove("annotations");
    }
}

/// Takes `tag` off every entry: an entry whose digest another remaining entry also
/// lists is removed, the last one only loses its name.
fn drop_name(manifests: &mut [Value], entries: &[Entry], remove: &mut [bool], tag: &TagRef) {
    for i in 0..entries.len() {
        if entries[i].tag.as_ref() != Some(tag) || remove[i] {
            continue;
        }
        let digest = &entries[i].desc.digest;
        let other = (0..entries.len()).any(|j| {
            j != i
                && !remove[j]
                && &entries[j].desc.digest == digest
                && entries[j].tag.as_ref() != Some(tag)
        });
        if other {
            remove[i] = true;
        } else {
            set_name(&mut manifests[i], None);
        }
    }
}

/// At most this many blobs are followed from the descriptors of one edit: a real
/// layout's images reach a few dozen each.
pub const MAX_REACHABLE: usize = 1_000_000;

/// Every digest reachable from `desc` (itself, nested manifests, configs, layers),
/// walked with a work list, not recursion: an index chain of any depth costs memory
/// in proportion to the blobs it names, never stack. Returns false when the walk was
/// cut at [`MAX_REACHABLE`] blobs (the caller must then not treat what it did not see
/// as unused).
pub fn reachable(layout: &dyn LayoutBlobs, desc: &Descriptor, out: &mut HashSet<String>) -> bool {
    let mut work = vec![desc.clone()];
    while let Some(desc) = work.pop() {
        if !crate::reference::is_digest(&desc.digest) || out.contains(&desc.digest) {
            continue;
        }
        if out.len() >= MAX_REACHABLE {
            return false;
        }
        out.insert(desc.digest.clone());
        let Ok(Some(loc)) = layout.blob(&desc.digest) else {
            continue;
        };
        if loc.size() > MANIFEST_LIMIT {
            continue; // a layer: nothing below it
        }
        let Ok(bytes) = layout.read_location(&loc, MANIFEST_LIMIT) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        let children = ["config"].iter().filter_map(|k| v.get(*k)).chain(
            ["layers", "manifests", "blobs"]
                .iter()
                .filter_map(|k| v.get(*k).and_then(Value::as_array))
                .flatten(),
        );
        for child in children {
            if let Ok(d) = Descriptor::deserialize(child)
                && !out.contains(&d.digest)
            {
                work.push(d);
            }
        }
    }
    true
}

/// The blobs only the removed descriptors used: what a delete may remove.
pub fn unshared_blobs(
    layout: &dyn LayoutBlobs,
    new_index: &[u8],
    removed: &[Descriptor],
) -> Vec<String> {
    let mut gone = HashSet::new();
    for d in removed {
        reachable(layout, d, &mut gone);
    }
    let mut reachable_from_rest = HashSet::new();
    let Ok(v) = serde_json::from_slice::<Value>(new_index) else {
        return Vec::new();
    };
    for m in v
        .get("manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        // what the walk did not see may be in use: remove nothing
        if let Ok(d) = Descriptor::deserialize(m)
            && !reachable(layout, &d, &mut reachable_from_rest)
        {
            tracing::warn!(
                "{}: more than {MAX_REACHABLE} blobs reachable: no blob removed",
                layout.display("index.json")
            );
            return Vec::new();
        }
    }
    let mut out: Vec<String> = gone
        .difference(&reachable_from_rest)
        .filter(|d| blob_rel_path(d).is_some())
        .cloned()
        .collect();
    out.sort();
    out
}
