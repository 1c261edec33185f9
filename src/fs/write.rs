//! Writes through the mount: `rm`, `ln`, `mv`, `mkdir` and `rmdir` on by-tag/ and
//! by-id/ become edits of the store (tag, untag, re-tag, delete), each followed by a
//! reload of that store, or, when the writer shows its edit was the only change, by
//! that edit applied in place (`patch`).

use std::ffi::OsStr;

use tracing::{debug, info};

use super::*;
use crate::reference::{Parsed, TagRef};
use crate::source::Edit;

/// The tag whose by-tag/ path is `<dir>/<name>`; EINVAL unless that path is the tag's
/// canonical place (so `docker.io/busybox:1` must be written
/// `docker.io/library/busybox:1`).
pub fn tag_at(dir: &str, name: &str) -> FsResult<TagRef> {
    // a name no file system would take is no tag of the mount's either
    if name.len() > crate::reference::NAME_MAX {
        return Err(Errno::ENAMETOOLONG.into());
    }
    let full = if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    };
    let tag = match crate::reference::parse(&full) {
        Ok(Parsed::Tag(t)) => t,
        _ => return Err(Errno::EINVAL.into()),
    };
    let comps = tag.components();
    if comps.iter().map(String::as_str).ne(full.split('/')) {
        return Err(Errno::EINVAL.into());
    }
    Ok(tag)
}

impl ImageFs {
    /// Refuses a write that no source can do (chmod, write into a config, a new
    /// regular file), or any write under `-o ro`, saying why.
    pub fn refuse_write(&self) -> Error {
        if self.options.read_only {
            Error::refused(Errno::EROFS, "mounted read-only")
        } else {
            Error::new(
                Errno::EPERM,
                "by-id files are image configs and by-tag entries are tags; only rm, ln, mv, mkdir and rmdir change them",
            )
        }
    }

    fn writable(&self) -> FsResult<()> {
        if self.options.read_only {
            return Err(Error::refused(Errno::EROFS, "mounted read-only"));
        }
        Ok(())
    }

    /// The store and role of a node.
    fn role(&self, ino: u64) -> FsResult<(Option<usize>, NodeRole)> {
        let state = self.state.read();
        let node = state.tree.get(ino).ok_or(Errno::ENOENT)?;
        Ok((node.store, node.role.clone()))
    }

    /// The image ID of an image inode.
    fn image_id(&self, ino: u64) -> FsResult<(usize, String)> {
        let state = self.state.read();
        match &state.tree.get(ino).ok_or(Errno::ENOENT)?.kind {
            NodeKind::Image { store, index, .. } => {
                Ok((*store, image_at(&state, *store, *index)?.id.to_string()))
            }
            _ => Err(Errno::EPERM.into()),
        }
    }

    /// Runs one write on a store's source, then reloads the store.
    fn run_write(&self, store: usize, what: &str, edit: Edit<'_>) -> FsResult<()> {
        let _one_writer = self.stores[store].writing.lock();
        let source = self.stores[store].source.as_ref();
        // Changed by another program since the last look? Then the reload below reads
        // that change too, and the kernel must be told of it. A write's own change the
        // kernel knows already (it updates the names and listings it touched), and is
        // not told: a notification waits for the directory locks, and one still
        // waiting when the daemon dies keeps the mount from failing over to ENOTCONN.
        let started = std::time::Instant::now();
        // (a writer that reports the tokens around its edit tells this itself)
        let recorded = self.state.read().stores[store].token.clone();
        let behind_before = match source.writer() {
            Some(w) if w.reports_tokens() => None,
            _ => Some(source.change_token().ok() != recorded),
        };
        let store_started = std::time::Instant::now();
        let written = match source.writer() {
            Some(writer) => writer.write_tracked(edit),
            None => Err(crate::source::read_only(source, what)),
        };
        let written = match written {
            Ok(w) => w,
            Err(e) => return Err(Error::from(e).context(format!("{what} refused"))),
        };
        let store_time = store_started.elapsed();
        // The benchmark of writes reads this line: the store's own write apart from
        // what imagefs does around it.
        let done = |applied: bool, own: std::time::Duration| {
            debug!(
                store = %source.describe(),
                store_ms = store_time.as_secs_f64() * 1e3,
                own_ms = own.as_secs_f64() * 1e3,
                applied,
                "write done"
            )
        };
        let applied = self.apply_written(store, &edit, &written);
        // measured before the log line, whose write to a busy disk may wait
        let applied_at = started.elapsed();
        info!(store = %source.describe(), "{what}");
        if applied {
            done(true, applied_at - store_time);
            return Ok(());
        }
        let behind = behind_before.unwrap_or_else(|| match &written.tokens {
            Some((before, _)) => Some(before) != recorded.as_ref(),
            None => true,
        });
        let old = self.reload(store).map_err(|e| {
            Error::new(
                Errno::EIO,
                format!("{what} was written, but the store cannot be read back: {e}"),
            )
        })?;
        let changed = if behind {
            self.invalidations(&old)
        } else {
            Vec::new()
        };
        if !changed.is_empty() {
            self.queued.lock().extend(changed);
            self.queued_wake.notify_one();
        }
        done(false, started.elapsed() - store_time);
        Ok(())
    }

    /// Holds a by-tag/ directory (and so its parents) when its last tag goes, as a
    /// real filesystem holds an emptied directory until rmdir.
    fn hold_dir(&self, store: usize, path: &str) {
        if !path.is_empty() {
            self.state.write().stores[store]
                .held_dirs
                .insert(path.to_string());
        }
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let child = self.lookup(parent, name)?;
        self.writable()?;
        let (store, parent_role) = self.role(parent)?;
        let (_, child_role) = self.role(child.ino)?;
        let store = store.ok_or(Errno::EPERM)?;
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        match (parent_role, child_role) {
            (NodeRole::TagDir(path), NodeRole::Image | NodeRole::Dangling) => {
                let tag = tag_at(&path, name)?;
                self.hold_dir(store, &path);
                self.run_write(store, &format!("untag {tag}"), Edit::Untag(&tag))
            }
            (NodeRole::ById, NodeRole::Image) => {
                if let Some(why) = self.stores[store]
                    .source
                    .writer()
                    .and_then(|w| w.no_image_deletes())
                {
                    return Err(Error::new(
                        Errno::EPERM,
                        format!("{name}: not deleted: {why}"),
                    ));
                }
                if child.nlink > 1 {
                    return Err(Error::new(
                        Errno::EBUSY,
                        format!(
                            "{name}: not deleted: it still has {} tag(s); rm them first",
                            child.nlink - 1
                        ),
                    ));
                }
                self.run_write(store, &format!("delete {name}"), Edit::Delete(name))
            }
            (_, NodeRole::TagDir(_)) => Err(Errno::EISDIR.into()),
            _ => Err(self.refuse_write()),
        }
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let child = self.lookup(parent, name)?;
        if child.kind != FileKind::Dir {
            return Err(Errno::ENOTDIR.into());
        }
        self.writable()?;
        let (store, role) = self.role(child.ino)?;
        let (Some(store), NodeRole::TagDir(path)) = (store, role) else {
            return Err(self.refuse_write());
        };
        if path.is_empty() {
            return Err(self.refuse_write());
        }
        let mut state = self.state.write();
        if let Some(NodeKind::Dir { children, .. }) = state.tree.get(child.ino).map(|n| &n.kind)
            && !children.is_empty()
        {
            return Err(Errno(libc::ENOTEMPTY).into());
        }
        // Nothing to persist: a repository directory exists through its tags.
        state.stores[store].held_dirs.remove(&path);
        state.rebuild(&self.stores);
        Ok(())
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        self.getattr(parent)?;
        self.writable()?;
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if self.lookup(parent, OsStr::new(name)).is_ok() {
            return Err(Errno::EEXIST.into());
        }
        let (store, role) = self.role(parent)?;
        let (Some(store), NodeRole::TagDir(path)) = (store, role) else {
            return Err(self.refuse_write());
        };
        let dir = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}/{name}")
        };
        // A directory must be able to hold tags: `<dir>/x:t` must be canonical.
        tag_at(&dir, "x:t")?;
        {
            let mut state = self.state.write();
            state.stores[store].held_dirs.insert(dir);
            state.rebuild(&self.stores);
        }
        self.lookup(parent, OsStr::new(name))
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> FsResult<Attr> {
        self.getattr(ino)?;
        self.writable()?;
        let (store, id) = self.image_id(ino)?;
        let (dir_store, role) = self.role(new_parent)?;
        let NodeRole::TagDir(path) = role else {
            return Err(self.refuse_write());
        };
        if dir_store != Some(store) {
            return Err(Errno::EXDEV.into());
        }
        let tag = tag_at(&path, new_name.to_str().ok_or(Errno::EINVAL)?)?;
        self.run_write(
            store,
            &format!("tag {id} as {tag}"),
            Edit::Tag { id: &id, tag: &tag },
        )?;
        self.getattr(ino)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        let child = self.lookup(parent, name)?;
        self.writable()?;
        let (store, from_dir) = self.role(parent)?;
        let (_, child_role) = self.role(child.ino)?;
        let (to_store, to_dir) = self.role(new_parent)?;
        let (
            NodeRole::TagDir(from_path),
            NodeRole::Image | NodeRole::Dangling,
            NodeRole::TagDir(to_path),
        ) = (from_dir, child_role, to_dir)
        else {
            return Err(self.refuse_write());
        };
        let store = store.ok_or(Errno::EPERM)?;
        if to_store != Some(store) {
            return Err(Errno::EXDEV.into());
        }
        if no_replace && self.lookup(new_parent, new_name).is_ok() {
            return Err(Errno::EEXIST.into());
        }
        let from = tag_at(&from_path, name.to_str().ok_or(Errno::ENOENT)?)?;
        let to = tag_at(&to_path, new_name.to_str().ok_or(Errno::EINVAL)?)?;
        if from == to {
            return Ok(());
        }
        self.hold_dir(store, &from_path);
        self.run_write(
            store,
            &format!("re-tag {from} as {to}"),
            Edit::Retag {
                from: &from,
                to: &to,
            },
        )
    }
}
