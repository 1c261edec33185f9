//! Noticing changes made by other programs: stores whose change token moved are
//! reloaded, and what the kernel must forget is worked out from the trees before and
//! after.

use tracing::{info, warn};

use super::*;

/// Something the kernel must forget after a store changed underneath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The name `name` in directory `parent`.
    Entry { parent: u64, name: String },
    /// The cached attributes (and data) of an inode.
    Inode(u64),
}

impl ImageFs {
    /// What writes queued for the kernel to forget, waiting up to `timeout` for some.
    pub fn wait_for_queued(&self, timeout: std::time::Duration) -> Vec<Invalidation> {
        let mut queued = self.queued.lock();
        if queued.is_empty() {
            self.queued_wake.wait_for(&mut queued, timeout);
        }
        std::mem::take(&mut *queued)
    }

    /// Reloads every store whose change token moved (a change made by another
    /// program), and says what the kernel must forget. Cheap when nothing changed: one
    /// stat-like call per store.
    pub fn refresh_changed(&self) -> Vec<Invalidation> {
        self.refresh_changed_where(|_| true)
    }

    /// The stores' watches, by store index (see `Source::watches`).
    pub fn store_watches(&self) -> Vec<(usize, crate::source::Watch)> {
        self.stores
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.source.watches().into_iter().map(move |w| (i, w)))
            .collect()
    }

    /// How many stores the mount holds.
    pub fn store_count(&self) -> usize {
        self.stores.len()
    }

    /// [`Self::refresh_changed`] for the stores `pick` names.
    pub fn refresh_changed_where(&self, pick: impl Fn(usize) -> bool) -> Vec<Invalidation> {
        let mut out = Vec::new();
        for (i, store) in self.stores.iter().enumerate().filter(|(i, _)| pick(*i)) {
            let _one_writer = store.writing.lock();
            let now = store.source.change_token().ok();
            if now.is_none() || self.state.read().stores[i].token == now {
                continue;
            }
            // a store that cannot be read is said so once per change, not every tick
            if *store.failed_token.lock() == now {
                continue;
            }
            info!(store = %store.source.describe(), "changed outside the mount: reloading");
            match self.reload(i) {
                Ok(old) => {
                    *store.failed_token.lock() = None;
                    out.extend(self.invalidations(&old));
                    drop(old);
                    super::load::give_back_freed_memory();
                }
                Err(e) => {
                    warn!("{e}: keeping the tree as it was until the store changes again");
                    *store.failed_token.lock() = now;
                }
            }
        }
        out
    }

    /// What changed between `old` and the current tree: names that went or now lead
    /// elsewhere, and inodes whose attributes changed, directories whose listing
    /// changed among them (the kernel keeps listings: opendir answers ENOSYS).
    pub(super) fn invalidations(&self, old: &Tree) -> Vec<Invalidation> {
        let state = self.state.read();
        let mut out = Vec::new();
        for (ino, node) in old.iter() {
            if let NodeKind::Dir { children, .. } = &node.kind {
                for (name, child) in children {
                    if state.tree.lookup(ino, name) != Some(*child) {
                        out.push(Invalidation::Entry {
                            parent: ino,
                            name: name.to_string(),
                        });
                    }
                }
            }
            let same_attr = match (&node.kind, state.tree.get(ino).map(|n| &n.kind)) {
                (NodeKind::Image { nlink: a, .. }, Some(NodeKind::Image { nlink: b, .. })) => {
                    a == b
                }
                (
                    NodeKind::Dir {
                        subdirs: a,
                        children: listed,
                    },
                    Some(NodeKind::Dir {
                        subdirs: b,
                        children: now,
                    }),
                ) => a == b && listed == now,
                (NodeKind::Symlink { target: a }, Some(NodeKind::Symlink { target: b })) => a == b,
                (_, None) => true, // gone: its names are invalidated above
                _ => false,
            };
            if !same_attr {
                out.push(Invalidation::Inode(ino));
            }
        }
        out
    }
}
