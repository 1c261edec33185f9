#![cfg(test)]
//! A reference model of the core: random sequences of `ln`, `rm`, `mv`, `mkdir`,
//! `rmdir`, and changes made to the store by another program, each checked against a
//! model built on a `BTreeMap<tag, image>`, for what every name resolves to, every
//! listing, every link count, each operation's errno, and what the kernel is told to
//! forget. The model says what a user sees; it shares no code with the tree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::source::ImageRecord;
use crate::source::mem::MemStore;

/// The tags the model plays with: (their by-tag/ directory, their name there).
const TAGS: &[(&str, &str)] = &[
    ("localhost", "a:1"),
    ("localhost", "a:2"),
    ("localhost", "b:1"),
    ("localhost/b", "c:1"),
    ("localhost/b", "c:2"),
    ("quay.io/x", "y:1"),
];

/// The directories `mkdir` and `rmdir` are tried on (paths under by-tag/).
const DIRS: &[&str] = &[
    "localhost",
    "localhost/b",
    "localhost/d",
    "quay.io",
    "quay.io/x",
    "quay.io/x/z",
];

const IMAGES: usize = 3;

fn config(i: usize) -> Vec<u8> {
    format!(r#"{{"architecture":"amd64","os":"linux","model":{i}}}"#).into_bytes()
}

#[derive(Clone, Debug)]
enum Op {
    /// `ln by-id/<image> by-tag/<tag>`
    Link {
        image: usize,
        tag: usize,
    },
    /// `rm by-tag/<tag>`
    Unlink {
        tag: usize,
    },
    /// `rm by-id/<image>`
    Delete {
        image: usize,
    },
    /// `mv by-tag/<from> by-tag/<to>`
    Rename {
        from: usize,
        to: usize,
    },
    Mkdir {
        dir: usize,
    },
    Rmdir {
        dir: usize,
    },
    /// Another program changes the store.
    Underneath(Vec<Change>),
    /// The watcher's tick.
    Refresh,
}

#[derive(Clone, Debug)]
enum Change {
    Tag { tag: usize, image: usize },
    Untag { tag: usize },
    Add { image: usize },
    Remove { image: usize },
}

/// What a store holds.
#[derive(Clone, Debug, Default, PartialEq)]
struct Content {
    images: BTreeSet<usize>,
    tags: BTreeMap<usize, usize>,
}

impl Content {
    fn apply(&mut self, change: &Change) {
        match *change {
            Change::Tag { tag, image } => {
                if self.images.contains(&image) {
                    self.tags.insert(tag, image);
                }
            }
            Change::Untag { tag } => {
                self.tags.remove(&tag);
            }
            Change::Add { image } => {
                self.images.insert(image);
            }
            Change::Remove { image } => {
                self.images.remove(&image);
                self.tags.retain(|_, i| *i != image);
            }
        }
    }
}

/// A node of the mount, by what it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Node {
    ById,
    /// A directory under by-tag/ (by-tag/ itself is the empty path).
    Dir(String),
    Image(usize),
}

/// What the mount shows: each directory's entries, and each node's attributes as far
/// as the kernel caches them (a directory's listing and link count, an image's link
/// count).
#[derive(Debug, Default, PartialEq)]
struct Shown {
    dirs: BTreeMap<Node, BTreeMap<String, Node>>,
    image_links: BTreeMap<usize, u32>,
}

impl Shown {
    fn of(content: &Content, held: &BTreeSet<String>, ids: &[String]) -> Shown {
        let mut shown = Shown::default();
        let by_id = shown.dirs.entry(Node::ById).or_default();
        for &i in &content.images {
            by_id.insert(ids[i].clone(), Node::Image(i));
            shown.image_links.insert(i, 1);
        }
        // a directory is there while a tag or a held directory is at or below it
        let mut paths: BTreeSet<String> = held.clone();
        paths.extend(content.tags.keys().map(|&t| TAGS[t].0.to_string()));
        shown.dirs.entry(Node::Dir(String::new())).or_default();
        for path in paths {
            let mut at = String::new();
            for part in path.split('/') {
                let parent = Node::Dir(at.clone());
                at = if at.is_empty() {
                    part.to_string()
                } else {
                    format!("{at}/{part}")
                };
                shown
                    .dirs
                    .entry(parent)
                    .or_default()
                    .insert(part.to_string(), Node::Dir(at.clone()));
                shown.dirs.entry(Node::Dir(at.clone())).or_default();
            }
        }
        for (&t, &i) in &content.tags {
            let (dir, name) = TAGS[t];
            shown
                .dirs
                .entry(Node::Dir(dir.to_string()))
                .or_default()
                .insert(name.to_string(), Node::Image(i));
            *shown.image_links.entry(i).or_default() += 1;
        }
        shown
    }

    fn has_dir(&self, path: &str) -> bool {
        self.dirs.contains_key(&Node::Dir(path.to_string()))
    }

    fn subdirs(&self, dir: &Node) -> u32 {
        self.dirs[dir]
            .values()
            .filter(|n| matches!(n, Node::Dir(_)))
            .count() as u32
    }

    /// What the kernel must forget when the mount goes from `self` to `now`: every
    /// name that went or leads elsewhere, and every node still there whose cached
    /// attributes changed.
    fn forget(&self, now: &Shown) -> BTreeSet<(Node, Option<String>)> {
        let mut out = BTreeSet::new();
        for (dir, entries) in &self.dirs {
            for (name, target) in entries {
                if now.dirs.get(dir).and_then(|e| e.get(name)) != Some(target) {
                    out.insert((dir.clone(), Some(name.clone())));
                }
            }
            if let Some(listed) = now.dirs.get(dir)
                && (listed != entries || now.subdirs(dir) != self.subdirs(dir))
            {
                out.insert((dir.clone(), None));
            }
        }
        for (&i, links) in &self.image_links {
            if now.image_links.get(&i).is_some_and(|l| l != links) {
                out.insert((Node::Image(i), None));
            }
        }
        out
    }
}

fn parent_of(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

struct Model {
    /// What the store holds.
    store: Content,
    /// What the mount last read of it.
    read: Content,
    /// by-tag/ directories held without tags.
    held: BTreeSet<String>,
    /// The store changed since the mount last read it.
    behind: bool,
}

impl Model {
    fn shown(&self, ids: &[String]) -> Shown {
        Shown::of(&self.read, &self.held, ids)
    }

    /// A write went to the store: the mount reads it back.
    fn written(&mut self) -> Result<(), Errno> {
        self.read = self.store.clone();
        self.behind = false;
        Ok(())
    }

    /// What an operation does to the model, and the errno it answers. Checks on names
    /// are made against what the mount shows; the edit itself against what the store
    /// holds, which another program may have changed since.
    fn apply(&mut self, op: &Op, ids: &[String]) -> Result<(), Errno> {
        let shown = self.shown(ids);
        let tag_shown = |t: usize| shown.has_dir(TAGS[t].0) && self.read.tags.contains_key(&t);
        match *op {
            Op::Link { image, tag } => {
                if !self.read.images.contains(&image) || !shown.has_dir(TAGS[tag].0) {
                    return Err(Errno::ENOENT);
                }
                if !self.store.images.contains(&image) {
                    return Err(Errno::ENOENT);
                }
                self.store.tags.insert(tag, image);
                self.written()
            }
            Op::Unlink { tag } => {
                if !tag_shown(tag) {
                    return Err(Errno::ENOENT);
                }
                self.held.insert(TAGS[tag].0.to_string());
                if self.store.tags.remove(&tag).is_none() {
                    return Err(Errno::ENOENT);
                }
                self.written()
            }
            Op::Delete { image } => {
                if !self.read.images.contains(&image) {
                    return Err(Errno::ENOENT);
                }
                if shown.image_links[&image] > 1 {
                    return Err(Errno::EBUSY);
                }
                if !self.store.images.contains(&image) {
                    return Err(Errno::ENOENT);
                }
                self.store.apply(&Change::Remove { image });
                self.written()
            }
            Op::Rename { from, to } => {
                if !tag_shown(from) || !shown.has_dir(TAGS[to].0) {
                    return Err(Errno::ENOENT);
                }
                if from == to {
                    return Ok(());
                }
                self.held.insert(TAGS[from].0.to_string());
                let Some(owner) = self.store.tags.remove(&from) else {
                    return Err(Errno::ENOENT);
                };
                self.store.tags.insert(to, owner);
                self.written()
            }
            Op::Mkdir { dir } => {
                let path = DIRS[dir];
                if !shown.has_dir(parent_of(path).0) {
                    return Err(Errno::ENOENT);
                }
                if shown.has_dir(path) {
                    return Err(Errno::EEXIST);
                }
                self.held.insert(path.to_string());
                Ok(())
            }
            Op::Rmdir { dir } => {
                let path = DIRS[dir];
                match shown.dirs.get(&Node::Dir(path.to_string())) {
                    None => Err(Errno::ENOENT),
                    Some(entries) if !entries.is_empty() => Err(Errno(libc::ENOTEMPTY)),
                    Some(_) => {
                        self.held.remove(path);
                        Ok(())
                    }
                }
            }
            Op::Underneath(ref changes) => {
                for c in changes {
                    self.store.apply(c);
                }
                self.behind = true;
                Ok(())
            }
            Op::Refresh => {
                self.read = self.store.clone();
                self.behind = false;
                Ok(())
            }
        }
    }
}

/// The store's records for a content, as a store of any kind would list them.
fn records(content: &Content, store: &MemStore, ids: &[String]) -> Vec<ImageRecord> {
    let blobs: Vec<_> = (0..IMAGES).map(|i| store.blob(&config(i)).0).collect();
    content
        .images
        .iter()
        .map(|&i| {
            let mut record = ImageRecord {
                claimed_id: ids[i].clone(),
                config: Some(blobs[i].clone()),
                config_name: format!("model image {i}"),
                ..Default::default()
            };
            let mut problems = Vec::new();
            for (&t, _) in content.tags.iter().filter(|(_, img)| **img == i) {
                let (dir, name) = TAGS[t];
                record.add_name(&format!("{dir}/{name}"), "model", &mut problems);
            }
            assert!(problems.is_empty(), "{problems:?}");
            record
        })
        .collect()
}

/// The mount under test, and the inode each node of the model was last seen at.
struct Harness {
    fs: ImageFs,
    store: MemStore,
    ids: Vec<String>,
    inos: HashMap<Node, u64>,
}

impl Harness {
    fn new(initial: &Content) -> Harness {
        let store = MemStore::new("model");
        let ids: Vec<String> = (0..IMAGES).map(|i| store.blob(&config(i)).1).collect();
        let listed = records(initial, &store, &ids);
        store.change(|s| s.records = listed);
        let fs = ImageFs::new(
            vec![Store::new("model", Box::new(store.clone()))],
            ConfigCache::new(1 << 20),
            FsOptions::default(),
        )
        .unwrap();
        Harness {
            fs,
            store,
            ids,
            inos: HashMap::new(),
        }
    }

    fn path_of(&self, node: &Node) -> String {
        match node {
            Node::ById => "by-id".into(),
            Node::Dir(p) if p.is_empty() => "by-tag".into(),
            Node::Dir(p) => format!("by-tag/{p}"),
            Node::Image(i) => format!("by-id/{}", self.ids[*i]),
        }
    }

    fn resolve(&self, path: &str) -> FsResult<Attr> {
        let mut attr = self.fs.getattr(ROOT_INO)?;
        for part in path.split('/') {
            attr = self.fs.lookup(attr.ino, OsStr::new(part))?;
        }
        Ok(attr)
    }

    fn ino(&self, node: &Node) -> u64 {
        match self.inos.get(node) {
            Some(&ino) => ino,
            None => panic!("{node:?} was never seen"),
        }
    }

    fn listing(&self, ino: u64) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        self.fs
            .readdir(ino, 0, |e| {
                names.insert(e.name.to_string());
                false
            })
            .unwrap();
        names.remove(".");
        names.remove("..");
        names
    }

    /// Runs an operation on the mount; its errno, and what it told the kernel to
    /// forget.
    fn run(&self, op: &Op, model: &Model) -> (Result<(), Errno>, Vec<Invalidation>) {
        let dir_ino = |path: &str| self.resolve(&self.path_of(&Node::Dir(path.into())));
        let errno = |r: FsResult<()>| r.map_err(|e| e.errno);
        let result = match *op {
            Op::Link { image, tag } => {
                let (dir, name) = TAGS[tag];
                self.resolve(&self.path_of(&Node::Image(image)))
                    .and_then(|img| Ok((img, dir_ino(dir)?)))
                    .and_then(|(img, dir)| self.fs.link(img.ino, dir.ino, OsStr::new(name)))
                    .map(|_| ())
            }
            Op::Unlink { tag } => {
                let (dir, name) = TAGS[tag];
                dir_ino(dir).and_then(|d| self.fs.unlink(d.ino, OsStr::new(name)))
            }
            Op::Delete { image } => self
                .resolve("by-id")
                .and_then(|d| self.fs.unlink(d.ino, OsStr::new(&self.ids[image]))),
            Op::Rename { from, to } => {
                let ((from_dir, from_name), (to_dir, to_name)) = (TAGS[from], TAGS[to]);
                dir_ino(from_dir)
                    .and_then(|f| Ok((f, dir_ino(to_dir)?)))
                    .and_then(|(f, t)| {
                        self.fs.rename(
                            f.ino,
                            OsStr::new(from_name),
                            t.ino,
                            OsStr::new(to_name),
                            false,
                        )
                    })
            }
            Op::Mkdir { dir } => {
                let (parent, name) = parent_of(DIRS[dir]);
                dir_ino(parent)
                    .and_then(|p| self.fs.mkdir(p.ino, OsStr::new(name)))
                    .map(|_| ())
            }
            Op::Rmdir { dir } => {
                let (parent, name) = parent_of(DIRS[dir]);
                dir_ino(parent).and_then(|p| self.fs.rmdir(p.ino, OsStr::new(name)))
            }
            Op::Underneath(_) => {
                let listed = records(&model.store, &self.store, &self.ids);
                self.store.change(|s| s.records = listed);
                Ok(())
            }
            Op::Refresh => return (Ok(()), self.fs.refresh_changed()),
        };
        (errno(result), self.fs.wait_for_queued(Duration::ZERO))
    }

    /// The mount shows exactly what the model does; notes each node's inode.
    fn check(&mut self, want: &Shown) -> Result<(), TestCaseError> {
        for (dir, entries) in &want.dirs {
            let path = self.path_of(dir);
            let attr = self
                .resolve(&path)
                .map_err(|e| TestCaseError::fail(format!("{path}: {e}")))?;
            prop_assert_eq!(attr.kind, FileKind::Dir, "{}", path);
            prop_assert_eq!(attr.nlink, 2 + want.subdirs(dir), "{}: link count", path);
            let names: BTreeSet<String> = entries.keys().cloned().collect();
            prop_assert_eq!(self.listing(attr.ino), names, "{}: listing", path);
            self.inos.insert(dir.clone(), attr.ino);
            for (name, target) in entries {
                let child = self
                    .fs
                    .lookup(attr.ino, OsStr::new(name))
                    .map_err(|e| TestCaseError::fail(format!("{path}/{name}: {e}")))?;
                if let Node::Image(i) = target {
                    prop_assert_eq!(child.kind, FileKind::File, "{}/{}", path, name);
                    prop_assert_eq!(
                        child.nlink,
                        want.image_links[i],
                        "{}/{}: link count",
                        path,
                        name
                    );
                    // a tag is a hard link of its image's by-id file
                    match self.inos.insert(target.clone(), child.ino) {
                        Some(seen) if dir != &Node::ById => {
                            prop_assert_eq!(
                                seen,
                                child.ino,
                                "{}/{} is by-id/{}",
                                path,
                                name,
                                self.ids[*i]
                            )
                        }
                        _ => {}
                    }
                }
            }
        }
        // and nothing else: every name the model does not show answers ENOENT
        for (t, (dir, name)) in TAGS.iter().enumerate() {
            let shown = want
                .dirs
                .get(&Node::Dir(dir.to_string()))
                .is_some_and(|e| e.contains_key(*name));
            if !shown {
                let path = format!("by-tag/{dir}/{name}");
                prop_assert_eq!(
                    self.resolve(&path).map(|_| ()),
                    Err(Errno::ENOENT.into()),
                    "{} (tag {})",
                    path,
                    t
                );
            }
        }
        for dir in DIRS {
            if !want.has_dir(dir) {
                let path = format!("by-tag/{dir}");
                prop_assert_eq!(
                    self.resolve(&path).map(|_| ()),
                    Err(Errno::ENOENT.into()),
                    "{}",
                    path
                );
            }
        }
        for i in 0..IMAGES {
            if !want.image_links.contains_key(&i) {
                let path = self.path_of(&Node::Image(i));
                prop_assert_eq!(
                    self.resolve(&path).map(|_| ()),
                    Err(Errno::ENOENT.into()),
                    "{}",
                    path
                );
            }
        }
        Ok(())
    }

    /// The model's invalidations, in inode numbers.
    fn as_sent(&self, forget: BTreeSet<(Node, Option<String>)>) -> BTreeSet<(u64, Option<String>)> {
        forget
            .into_iter()
            .map(|(node, name)| (self.ino(&node), name))
            .collect()
    }
}

fn sent(invalidations: Vec<Invalidation>) -> BTreeSet<(u64, Option<String>)> {
    invalidations
        .into_iter()
        .map(|i| match i {
            Invalidation::Entry { parent, name } => (parent, Some(name)),
            Invalidation::Inode(ino) => (ino, None),
        })
        .collect()
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (0..TAGS.len(), 0..IMAGES).prop_map(|(tag, image)| Change::Tag { tag, image }),
        2 => (0..TAGS.len()).prop_map(|tag| Change::Untag { tag }),
        1 => (0..IMAGES).prop_map(|image| Change::Add { image }),
        1 => (0..IMAGES).prop_map(|image| Change::Remove { image }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..IMAGES, 0..TAGS.len()).prop_map(|(image, tag)| Op::Link { image, tag }),
        3 => (0..TAGS.len()).prop_map(|tag| Op::Unlink { tag }),
        1 => (0..IMAGES).prop_map(|image| Op::Delete { image }),
        3 => (0..TAGS.len(), 0..TAGS.len()).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => (0..DIRS.len()).prop_map(|dir| Op::Mkdir { dir }),
        2 => (0..DIRS.len()).prop_map(|dir| Op::Rmdir { dir }),
        2 => prop::collection::vec(change(), 1..4).prop_map(Op::Underneath),
        2 => Just(Op::Refresh),
    ]
}

fn initial() -> impl Strategy<Value = Content> {
    prop::collection::vec(change(), 0..6).prop_map(|changes| {
        let mut content = Content {
            images: (0..IMAGES).collect(),
            ..Default::default()
        };
        changes.iter().for_each(|c| content.apply(c));
        content
    })
}

proptest! {
    // A fixed number of cases, so `cargo test` takes the same time every run; no
    // failure files are written into the tree (a failure prints its minimal case).
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_core_behaves_as_the_model(start in initial(), ops in prop::collection::vec(op(), 1..40)) {
        let mut mount = Harness::new(&start);
        let mut model = Model {
            store: start.clone(),
            read: start,
            held: BTreeSet::new(),
            behind: false,
        };
        mount.check(&model.shown(&mount.ids))?;
        for op in &ops {
            let before = model.shown(&mount.ids);
            let was_behind = model.behind;
            let want = model.apply(op, &mount.ids);
            let (got, invalidated) = mount.run(op, &model);
            prop_assert_eq!(got, want, "{:?}", op);
            let now = model.shown(&mount.ids);
            mount.check(&now)?;
            // The kernel is told what changed behind its back: on the watcher's tick,
            // and by a write that read another program's change along with its own.
            // A write's own change it knows already.
            let told = match op {
                Op::Refresh => before.forget(&now),
                _ if was_behind && got.is_ok() && !model.behind => before.forget(&now),
                _ => BTreeSet::new(),
            };
            prop_assert_eq!(sent(invalidated), mount.as_sent(told), "{:?}", op);
        }
    }
}
