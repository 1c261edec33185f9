//! Extended attributes: what `getfattr -d` shows of an image, a store and the mount.

use std::ffi::OsStr;

use super::*;
use crate::catalog::Image;

/// What a getxattr/listxattr caller gets, following the size-0 protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

/// Size 0 asks for the size; too small a buffer is ERANGE.
pub fn xattr_reply(value: Vec<u8>, size: u32) -> FsResult<XattrReply> {
    if size == 0 {
        return u32::try_from(value.len())
            .map(XattrReply::Size)
            .map_err(|_| Errno::ERANGE.into());
    }
    if value.len() > size as usize {
        return Err(Errno::ERANGE.into());
    }
    Ok(XattrReply::Data(value))
}

fn image_xattrs(image: &Image, source: &str, out: &mut Vec<(String, String)>) {
    let mut put = |name: &str, value: String| {
        if !value.is_empty() {
            out.push((format!("user.image.{name}"), value));
        }
    };
    put("tags", join(image.tags.iter().map(|t| t.to_string())));
    put(
        "digest",
        image.manifest_digests.first().cloned().unwrap_or_default(),
    );
    put(
        "digests",
        join(
            image
                .manifest_digests
                .iter()
                .chain(image.digest_refs.iter())
                .cloned(),
        ),
    );
    put("source", source.to_string());
    put(
        "size",
        image.layers_size.map(|s| s.to_string()).unwrap_or_default(),
    );
    put(
        "architecture",
        image
            .architecture
            .as_deref()
            .unwrap_or_default()
            .to_string(),
    );
    put("os", image.os.as_deref().unwrap_or_default().to_string());
    put(
        "variant",
        image.variant.as_deref().unwrap_or_default().to_string(),
    );
    put(
        "created",
        image.created.as_deref().unwrap_or_default().to_string(),
    );
    put("platforms", join(image.other_platforms.iter().cloned()));
    for (name, value) in &image.extra_xattrs {
        if let Some(short) = name.strip_prefix("user.image.") {
            put(short, value.clone());
        }
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

impl ImageFs {
    /// The extended attributes of a node, in a stable order.
    pub fn xattrs(&self, ino: u64) -> FsResult<Vec<(String, String)>> {
        let state = self.state.read();
        let node = state.tree.get(ino).ok_or(Errno::ENOENT)?;
        let mut out = Vec::new();
        match &node.kind {
            NodeKind::Image { store, index, .. } => {
                let image = image_at(&state, *store, *index)?;
                image_xattrs(image, &self.stores[*store].source.describe(), &mut out);
            }
            NodeKind::Dir { .. } => {
                // The store's own directory says where it comes from.
                if let Some(s) = node.store {
                    let is_store_root = state.tree.lookup(ino, "by-id").is_some();
                    if is_store_root {
                        out.push(("user.image.source".into(), self.stores[s].source.describe()));
                    }
                }
            }
            NodeKind::Symlink { .. } => {}
        }
        if ino == ROOT_INO {
            let stats = serde_json::json!({
                "config_cache": self.cache.stats(),
                "stores": self.stores.len(),
                "kernel": {
                    "reads": self.counters.reads.load(std::sync::atomic::Ordering::Relaxed),
                    "pushed": self.counters.pushed.load(std::sync::atomic::Ordering::Relaxed),
                    "getxattrs": self.counters.getxattrs.load(std::sync::atomic::Ordering::Relaxed),
                    "opens": self.counters.opens.load(std::sync::atomic::Ordering::Relaxed),
                },
            });
            out.push(("user.imagefs.stats".into(), stats.to_string()));
        }
        Ok(out)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = name.to_str().ok_or(Errno::ENODATA)?;
        // `ls -l` asks every file for security.selinux and the POSIX ACLs, a FUSE round
        // trip each. Those namespaces are not supported here, and saying so (rather
        // than "no such attribute") lets ls remember it for the whole file system and
        // stop asking: 2 requests per `ls -l` instead of 2 per file.
        if !name.starts_with("user.") {
            self.getattr(ino)?;
            return Err(Errno::EOPNOTSUPP.into());
        }
        if !name.starts_with("user.image.") && !name.starts_with("user.imagefs.") {
            self.getattr(ino)?;
            return Err(Errno::ENODATA.into());
        }
        self.xattrs(ino)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(Errno::ENODATA.into())
    }

    /// Names, each ending in NUL.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        for (name, _) in self.xattrs(ino)? {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }
}
