//! The namespace of the whole mount, rebuilt from the stores' catalogs: directories,
//! image inodes (by-id entries and the by-tag hard links to them), and dangling-tag
//! symlinks.

use std::collections::{BTreeSet, HashMap};

/// foldhash: inode numbers and the store's names, hashed on every request and many
/// times per build; randomly seeded, and no flood resistance is needed beyond that.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use super::inode::{InodeTable, NodeKey, ROOT_INO};
use crate::catalog::Catalog;
use crate::reference::TagRef;

fn fits(tag: &TagRef) -> bool {
    tag.file_name_fits()
}

/// A directory entry's name. Shared, not copied: a by-id entry's name is its image's
/// [`crate::catalog::ImageId`].
pub type Name = Arc<str>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// Children sorted by name; `subdirs` counts directories among them (for nlink).
    Dir {
        children: Vec<(Name, u64)>,
        subdirs: u32,
    },
    /// Image `index` of store `store`'s catalog; `nlink` = 1 (by-id) + its tags.
    Image {
        store: usize,
        index: usize,
        nlink: u32,
    },
    Symlink {
        target: String,
    },
}

/// Where a node stands, for the writes: which names are tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    /// The mount root, or a store's own directory.
    Root,
    ById,
    /// `by-tag/` itself (path "") or a directory below it, by its path there.
    TagDir(String),
    /// An image inode (its by-id entry and its tags).
    Image,
    /// A dangling tag.
    Dangling,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub parent: u64,
    pub kind: NodeKind,
    /// Which store the node belongs to (`None` for the multi-store root).
    pub store: Option<usize>,
    pub role: NodeRole,
}

/// What the tree needs of one store.
pub struct StoreView<'a> {
    pub label: &'a str,
    pub catalog: &'a Arc<Catalog>,
    /// by-tag/ directories that exist without a tag below them (made by mkdir, or
    /// left empty by an rm through the mount), by path.
    pub held_dirs: &'a BTreeSet<String>,
}

#[derive(Debug, Default)]
pub struct Tree {
    nodes: FastMap<u64, Node>,
}

/// A directory under construction: its children in the order added, sorted once at
/// the end (a by-id directory of 10,000 IDs costs a tenth of what keeping it sorted
/// on every insert did); the first of a name wins.
struct DirBuild {
    parent: u64,
    store: Option<usize>,
    role: NodeRole,
    children: Vec<ChildBuild>,
}

struct ChildBuild {
    name: Name,
    ino: u64,
    is_dir: bool,
}

impl DirBuild {
    fn new(parent: u64, store: Option<usize>, role: NodeRole) -> DirBuild {
        DirBuild {
            parent,
            store,
            role,
            children: Vec::new(),
        }
    }
}

/// The directories of a tree under construction, by inode.
type DirMap = FastMap<u64, DirBuild>;

impl Tree {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Node)> {
        self.nodes.iter().map(|(i, n)| (*i, n))
    }

    pub(super) fn node_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub(super) fn insert_node(&mut self, ino: u64, node: Node) {
        self.nodes.insert(ino, node);
    }

    pub(super) fn remove_node(&mut self, ino: u64) -> Option<Node> {
        self.nodes.remove(&ino)
    }

    /// Takes `name` out of directory `dir`; the inode it named.
    pub(super) fn remove_child(&mut self, dir: u64, name: &str) -> Option<u64> {
        let NodeKind::Dir { children, .. } = &self.nodes.get(&dir)?.kind else {
            return None;
        };
        let at = children.binary_search_by(|(n, _)| (**n).cmp(name)).ok()?;
        let child = children[at].1;
        let was_dir = matches!(
            self.nodes.get(&child).map(|n| &n.kind),
            Some(NodeKind::Dir { .. })
        );
        let NodeKind::Dir { children, subdirs } = &mut self.nodes.get_mut(&dir)?.kind else {
            return None;
        };
        children.remove(at);
        if was_dir {
            *subdirs = subdirs.checked_sub(1)?;
        }
        Some(child)
    }

    /// Puts `name` into directory `dir`, in order; `None` if the name is taken.
    pub(super) fn insert_child(
        &mut self,
        dir: u64,
        name: &str,
        ino: u64,
        is_dir: bool,
    ) -> Option<()> {
        let NodeKind::Dir { children, subdirs } = &mut self.nodes.get_mut(&dir)?.kind else {
            return None;
        };
        let at = children.binary_search_by(|(n, _)| (**n).cmp(name)).err()?;
        children.insert(at, (Name::from(name), ino));
        if is_dir {
            *subdirs += 1;
        }
        Some(())
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        match &self.nodes.get(&parent)?.kind {
            NodeKind::Dir { children, .. } => children
                .binary_search_by(|(n, _)| (**n).cmp(name))
                .ok()
                .map(|i| children[i].1),
            _ => None,
        }
    }

    /// Tags whose file name would be longer than [`NAME_MAX`] are not shown (the
    /// catalog says so once); an image's link count counts the names shown.
    pub fn build(stores: &[StoreView<'_>], inodes: &mut InodeTable) -> Tree {
        let mut dirs: DirMap = FastMap::default();
        let mut leaves: FastMap<u64, Node> = FastMap::default();
        dirs.insert(ROOT_INO, DirBuild::new(ROOT_INO, None, NodeRole::Root));
        let single = stores.len() == 1;
        for (s, view) in stores.iter().enumerate() {
            let root = inodes.ino(NodeKey::StoreRoot(s));
            if !single {
                add_child(&mut dirs, ROOT_INO, view.label, root, true);
                dirs.insert(root, DirBuild::new(ROOT_INO, Some(s), NodeRole::Root));
            } else if let Some(d) = dirs.get_mut(&ROOT_INO) {
                d.store = Some(s);
            }
            let by_id = inodes.ino(NodeKey::ById(s));
            let by_tag = inodes.ino(NodeKey::ByTag(s));
            dirs.insert(by_id, DirBuild::new(root, Some(s), NodeRole::ById));
            dirs.insert(
                by_tag,
                DirBuild::new(root, Some(s), NodeRole::TagDir(String::new())),
            );
            add_child(&mut dirs, root, "by-id", by_id, true);
            add_child(&mut dirs, root, "by-tag", by_tag, true);

            let mut repo_dirs: FastMap<(&str, &str), u64> = FastMap::default();
            for (index, image) in view.catalog.images.iter().enumerate() {
                let ino = inodes.ino(NodeKey::Image(s, image.id.clone()));
                leaves.insert(
                    ino,
                    Node {
                        parent: by_id,
                        kind: NodeKind::Image {
                            store: s,
                            index,
                            nlink: 1 + image.tags.iter().filter(|t| fits(t)).count() as u32,
                        },
                        store: Some(s),
                        role: NodeRole::Image,
                    },
                );
                add_child(&mut dirs, by_id, image.id.clone(), ino, false);
                for tag in image.tags.iter().filter(|t| fits(t)) {
                    // most tags share their repository's directory with others
                    let repo = (tag.domain.as_str(), tag.path.as_str());
                    let parent = match repo_dirs.get(&repo) {
                        Some(&dir) => dir,
                        None => {
                            let comps = tag.components();
                            let (dir, _) = tag_parent(&mut dirs, inodes, s, by_tag, &comps);
                            repo_dirs.insert(repo, dir);
                            dir
                        }
                    };
                    add_child(&mut dirs, parent, tag.file_name(), ino, false);
                }
            }
            for d in view.catalog.dangling.iter().filter(|d| fits(&d.tag)) {
                let comps = d.tag.components();
                let (parent, name) = tag_parent(&mut dirs, inodes, s, by_tag, &comps);
                let ino = inodes.ino(NodeKey::Dangling(s, comps.join("/")));
                // from by-tag/<c1>/…/<cn> up to the store root is n levels
                let target = format!("{}by-id/{}", "../".repeat(comps.len()), d.target);
                leaves.insert(
                    ino,
                    Node {
                        parent,
                        kind: NodeKind::Symlink { target },
                        store: Some(s),
                        role: NodeRole::Dangling,
                    },
                );
                add_child(&mut dirs, parent, name, ino, false);
            }
            for path in view.held_dirs {
                let comps: Vec<String> = path.split('/').map(str::to_string).collect();
                let (parent, name) = tag_parent(&mut dirs, inodes, s, by_tag, &comps);
                let ino = inodes.ino(NodeKey::TagDir(s, path.clone()));
                if let std::collections::hash_map::Entry::Vacant(e) = dirs.entry(ino) {
                    e.insert(DirBuild::new(
                        parent,
                        Some(s),
                        NodeRole::TagDir(path.clone()),
                    ));
                    add_child(&mut dirs, parent, name, ino, true);
                }
            }
        }
        let mut nodes = leaves;
        for (ino, mut dir) in dirs {
            // stable: among equal names the first added stays first, and is kept
            dir.children.sort_by(|a, b| a.name.cmp(&b.name));
            dir.children
                .dedup_by(|later, first| later.name == first.name);
            let subdirs = dir.children.iter().filter(|c| c.is_dir).count() as u32;
            // a new list of exactly its length: collected in place, it would keep the
            // build list's allocation (grown by doubling, of bigger elements)
            let mut children = Vec::with_capacity(dir.children.len());
            children.extend(dir.children.into_iter().map(|c| (c.name, c.ino)));
            nodes.insert(
                ino,
                Node {
                    parent: dir.parent,
                    kind: NodeKind::Dir { children, subdirs },
                    store: dir.store,
                    role: dir.role,
                },
            );
        }
        Tree { nodes }
    }
}

/// Takes the name as given: a shared one (an image ID) is not copied.
fn add_child(dirs: &mut DirMap, parent: u64, name: impl Into<Name>, ino: u64, is_dir: bool) {
    if let Some(dir) = dirs.get_mut(&parent) {
        dir.children.push(ChildBuild {
            name: name.into(),
            ino,
            is_dir,
        });
    }
}

/// Creates the directories of a tag path; returns the last one and the file name.
fn tag_parent(
    dirs: &mut DirMap,
    inodes: &mut InodeTable,
    store: usize,
    by_tag: u64,
    comps: &[String],
) -> (u64, String) {
    let mut parent = by_tag;
    let mut path = String::new();
    let (last, dir_comps) = comps
        .split_last()
        .map(|(l, d)| (l.clone(), d))
        .unwrap_or_default();
    for c in dir_comps {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(c);
        let ino = inodes.ino(NodeKey::TagDir(store, path.clone()));
        if let std::collections::hash_map::Entry::Vacant(e) = dirs.entry(ino) {
            e.insert(DirBuild::new(
                parent,
                Some(store),
                NodeRole::TagDir(path.clone()),
            ));
            add_child(dirs, parent, c.as_str(), ino, true);
        }
        parent = ino;
    }
    (parent, last)
}
