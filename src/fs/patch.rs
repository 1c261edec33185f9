//! A change of tags applied to what the mount shows, in place: the catalog's images
//! and dangling tags, the tree's directories and link counts. A write through the
//! mount comes here when its writer can show (by the change tokens it read under the
//! store's lock) that its edit was the store's only change, so the write costs what
//! it changed and not a reading of the whole store (issue 17, part 2).
//!
//! Every step checks what it expects to find; anything unexpected gives up, and the
//! caller reads the store again, which is always right.

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::debug;

use super::inode::{InodeTable, NodeKey};
use super::load::UnkeptCatalog;
use super::tree::{Node, NodeKind, NodeRole, Tree};
use super::{ImageFs, State};
use crate::catalog::{Catalog, DanglingTag};
use crate::reference::TagRef;
use crate::source::{Edit, Written};

/// Where a tag leads in a store's catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum TagTarget {
    /// The image at this index of the catalog's images.
    Image(usize),
    /// A dangling tag, to this target under by-id/.
    Dangling(String),
}

/// One tag moved: from where it led (`None`: it was no tag) to where it leads now.
#[derive(Clone, Debug)]
pub(super) struct TagChange {
    pub tag: TagRef,
    pub from: Option<TagTarget>,
    pub to: Option<TagTarget>,
}

/// The tag changes an edit makes, as every writer applies it (a tag names one image,
/// moved from wherever it was); `None` for an edit that does more than move tags (a
/// delete), or when the tree cannot say where a tag is (a tag too long for a name).
pub(super) fn changes_for(
    tree: &Tree,
    inodes: &InodeTable,
    store: usize,
    catalog: &Catalog,
    edit: &Edit<'_>,
) -> Option<Vec<TagChange>> {
    let current = |tag: &TagRef| tag_target(tree, inodes, store, catalog, tag);
    let change = |tag: &TagRef, from, to| TagChange {
        tag: tag.clone(),
        from,
        to,
    };
    Some(match *edit {
        Edit::Tag { id, tag } => {
            let image = catalog.images.binary_search_by(|i| (*i.id).cmp(id)).ok()?;
            vec![change(tag, current(tag)?, Some(TagTarget::Image(image)))]
        }
        Edit::Untag(tag) => vec![change(tag, Some(current(tag)??), None)],
        Edit::Retag { from, to } => {
            let moved = current(from)??;
            vec![
                change(from, Some(moved.clone()), None),
                change(to, current(to)?, Some(moved)),
            ]
        }
        Edit::Delete(_) => return None,
    })
}

/// Where `tag` leads now: `Some(None)` when it is no tag of the store, `None` when the
/// tree cannot say.
fn tag_target(
    tree: &Tree,
    inodes: &InodeTable,
    store: usize,
    catalog: &Catalog,
    tag: &TagRef,
) -> Option<Option<TagTarget>> {
    if !tag.file_name_fits() {
        return None;
    }
    let mut node = inodes.get(&NodeKey::ByTag(store))?;
    for c in tag.components() {
        match tree.lookup(node, &c) {
            Some(child) => node = child,
            None => return Some(None),
        }
    }
    match &tree.get(node)?.kind {
        NodeKind::Image { index, .. } => Some(Some(TagTarget::Image(*index))),
        NodeKind::Symlink { .. } => {
            let i = dangling_at(catalog, tag).ok()?;
            Some(Some(TagTarget::Dangling(
                catalog.dangling[i].target.clone(),
            )))
        }
        NodeKind::Dir { .. } => None,
    }
}

fn dangling_at(catalog: &Catalog, tag: &TagRef) -> Result<usize, usize> {
    catalog.dangling.binary_search_by(|d| d.tag.cmp(tag))
}

/// Applies the changes to a catalog, as a scan after the edit would build it: an
/// image's tags sorted, dangling tags sorted by tag. `None` when the catalog is not
/// as the changes expect.
pub(super) fn apply_to_catalog(catalog: &mut Catalog, changes: &[TagChange]) -> Option<()> {
    for ch in changes {
        match &ch.from {
            Some(TagTarget::Image(i)) => {
                let tags = &mut catalog.images.get_mut(*i)?.tags;
                let at = tags.binary_search(&ch.tag).ok()?;
                tags.remove(at);
            }
            Some(TagTarget::Dangling(_)) => {
                let at = dangling_at(catalog, &ch.tag).ok()?;
                catalog.dangling.remove(at);
            }
            None => {}
        }
        match &ch.to {
            Some(TagTarget::Image(i)) => {
                let tags = &mut catalog.images.get_mut(*i)?.tags;
                let at = tags.binary_search(&ch.tag).err()?;
                tags.insert(at, ch.tag.clone());
            }
            Some(TagTarget::Dangling(target)) => {
                let at = dangling_at(catalog, &ch.tag).err()?;
                catalog.dangling.insert(
                    at,
                    DanglingTag {
                        tag: ch.tag.clone(),
                        target: target.clone(),
                    },
                );
            }
            None => {}
        }
    }
    Some(())
}

/// Sets the attributes a writer reported on the images it touched.
pub(super) fn apply_xattrs(
    catalog: &mut Catalog,
    xattrs: &[(String, String, String)],
) -> Option<()> {
    for (id, name, value) in xattrs {
        let i = catalog
            .images
            .binary_search_by(|im| (*im.id).cmp(id))
            .ok()?;
        let extra = &mut catalog.images[i].extra_xattrs;
        match extra.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.clone(),
            None => extra.push((name.as_str().into(), value.clone())),
        }
    }
    Some(())
}

/// Whether a by-tag/ directory is held (by mkdir, or emptied through the mount), or
/// has a held directory below it.
fn holds(held: &BTreeSet<String>, path: &str) -> bool {
    use std::ops::Bound;
    held.range::<str, _>((Bound::Included(path), Bound::Unbounded))
        .take_while(|h| h.starts_with(path))
        .any(|h| h.len() == path.len() || h.as_bytes()[path.len()] == b'/')
}

impl Tree {
    /// Applies the changes (already applied to `catalog`) to the tree, as
    /// [`Tree::build`] would lay it out from that catalog: directories made for a
    /// new tag and dropped when their last entry goes (unless held), link counts
    /// moved. `None` when the tree is not as expected; it must then be built again.
    pub(super) fn apply(
        &mut self,
        inodes: &mut InodeTable,
        store: usize,
        catalog: &Catalog,
        held: &BTreeSet<String>,
        changes: &[TagChange],
    ) -> Option<()> {
        let by_tag = inodes.get(&NodeKey::ByTag(store))?;
        for ch in changes {
            let comps = ch.tag.components();
            let (name, dirs) = comps.split_last()?;
            if ch.from.is_some() {
                self.remove_tag(by_tag, dirs, name, held)?;
            }
            if let Some(to) = &ch.to {
                let parent = self.make_dirs(inodes, store, by_tag, dirs)?;
                let ino = match to {
                    TagTarget::Image(i) => {
                        let id = &catalog.images.get(*i)?.id;
                        let ino = inodes.get(&NodeKey::Image(store, id.clone()))?;
                        match &mut self.node_mut(ino)?.kind {
                            NodeKind::Image { nlink, index, .. } if index == i => *nlink += 1,
                            _ => return None,
                        }
                        ino
                    }
                    TagTarget::Dangling(target) => {
                        let ino = inodes.ino(NodeKey::Dangling(store, comps.join("/")));
                        // from by-tag/<c1>/…/<cn> up to the store root is n levels
                        let target = format!("{}by-id/{target}", "../".repeat(comps.len()));
                        self.insert_node(
                            ino,
                            Node {
                                parent,
                                kind: NodeKind::Symlink { target },
                                store: Some(store),
                                role: NodeRole::Dangling,
                            },
                        );
                        ino
                    }
                };
                self.insert_child(parent, name, ino, false)?;
            }
        }
        Some(())
    }

    /// Takes a tag's name out of its directory, and the directories it leaves empty.
    fn remove_tag(
        &mut self,
        by_tag: u64,
        dirs: &[String],
        name: &str,
        held: &BTreeSet<String>,
    ) -> Option<()> {
        let mut chain = vec![by_tag];
        for c in dirs {
            chain.push(self.lookup(*chain.last()?, c)?);
        }
        let parent = *chain.last()?;
        let ino = self.remove_child(parent, name)?;
        match &mut self.node_mut(ino)?.kind {
            NodeKind::Image { nlink, .. } if *nlink > 1 => *nlink -= 1,
            NodeKind::Symlink { .. } => {
                self.remove_node(ino);
            }
            _ => return None,
        }
        // up from the tag's directory: each one left empty, and not held, goes
        for depth in (1..chain.len()).rev() {
            let dir = chain[depth];
            let empty = matches!(&self.get(dir)?.kind, NodeKind::Dir { children, .. } if children.is_empty());
            if !empty || holds(held, &dirs[..depth].join("/")) {
                break;
            }
            self.remove_child(chain[depth - 1], &dirs[depth - 1])?;
            self.remove_node(dir);
        }
        Some(())
    }

    /// The directory of a tag, made (with its parents) where missing.
    fn make_dirs(
        &mut self,
        inodes: &mut InodeTable,
        store: usize,
        by_tag: u64,
        dirs: &[String],
    ) -> Option<u64> {
        let mut parent = by_tag;
        let mut path = String::new();
        for c in dirs {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(c);
            parent = match self.lookup(parent, c) {
                Some(dir) => {
                    if !matches!(self.get(dir)?.kind, NodeKind::Dir { .. }) {
                        return None;
                    }
                    dir
                }
                None => {
                    let dir = inodes.ino(NodeKey::TagDir(store, path.clone()));
                    self.insert_node(
                        dir,
                        Node {
                            parent,
                            kind: NodeKind::Dir {
                                children: Vec::new(),
                                subdirs: 0,
                            },
                            store: Some(store),
                            role: NodeRole::TagDir(path.clone()),
                        },
                    );
                    self.insert_child(parent, c, dir, true)?;
                    dir
                }
            };
        }
        Some(parent)
    }
}

impl ImageFs {
    /// Applies a write's edit to the store's catalog and the tree in place, when its
    /// writer showed that the edit was the store's only change since the catalog was
    /// read. `false`: nothing could be applied, and the store must be read again
    /// (which replaces whatever was).
    pub(super) fn apply_written(&self, store: usize, edit: &Edit<'_>, written: &Written) -> bool {
        let (Some((before, after)), true) = (&written.tokens, written.exact) else {
            return false;
        };
        let generation = {
            let mut guard = self.state.write();
            let State {
                stores,
                tree,
                inodes,
            } = &mut *guard;
            let Some(st) = stores.get_mut(store) else {
                return false;
            };
            if st.token.as_ref() != Some(before) {
                return false;
            }
            let Some(changes) = changes_for(tree, inodes, store, &st.catalog, edit) else {
                return false;
            };
            // copied only when another holds it (a reader, or a keep under way)
            let catalog = Arc::make_mut(&mut st.catalog);
            if apply_to_catalog(catalog, &changes).is_none()
                || apply_xattrs(catalog, &written.xattrs).is_none()
            {
                debug!(
                    store,
                    "the catalog is not as the write expected: reading the store"
                );
                return false;
            }
            st.token = Some(after.clone());
            st.generation += 1;
            let generation = st.generation;
            if tree
                .apply(inodes, store, &st.catalog, &st.held_dirs, &changes)
                .is_none()
            {
                debug!(store, "the tree is not as the write expected: built again");
                guard.rebuild(&self.stores);
            }
            generation
        };
        // kept for the next mount once settled, under the key the store then has
        // (worked out off the request path: the store's files are busy being
        // replaced just now, and a stat of them waits)
        self.unkept.lock().push(UnkeptCatalog {
            store,
            key: None,
            generation,
            at: std::time::Instant::now(),
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_held_by_itself_or_one_below_it() {
        let held: BTreeSet<String> = ["a/b-x", "a/b/c", "q"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(holds(&held, "a/b"));
        assert!(holds(&held, "a"));
        assert!(holds(&held, "a/b-x"));
        assert!(holds(&held, "q"));
        assert!(!holds(&held, "a/b-"));
        assert!(!holds(&held, "a/c"));
        assert!(!holds(&held, "qq"));
        let only_sibling: BTreeSet<String> = ["a/b-x"].iter().map(|s| s.to_string()).collect();
        assert!(!holds(&only_sibling, "a/b"));
    }
}
