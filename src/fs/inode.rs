//! Where an inode number is chosen. Numbers are handed out on first sight of a node
//! and never reused or renumbered for the life of the mount, so that a reload (a store
//! changed underneath) keeps every unchanged name at its inode and the kernel's cached
//! entries stay valid.

use std::collections::HashMap;

/// FUSE's root inode.
pub const ROOT_INO: u64 = 1;

/// What a node is, independent of its inode number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeKey {
    /// The mount root.
    Root,
    /// A store's own directory (with several sources); with one, the store is the root.
    StoreRoot(usize),
    ById(usize),
    ByTag(usize),
    /// A directory below by-tag/, by its path there (`docker.io/library`).
    TagDir(usize, String),
    /// An image: its by-id file and all its tags (one inode: hard links).
    Image(usize, crate::catalog::ImageId),
    /// A dangling tag's symlink, by its path under by-tag/.
    Dangling(usize, String),
}

#[derive(Debug)]
pub struct InodeTable {
    next: u64,
    /// foldhash, not SipHash: the keys are the store's own names, hashed 20,000
    /// times per tree build, and nothing here needs flood resistance.
    numbers: HashMap<NodeKey, u64, foldhash::fast::RandomState>,
    single_store: bool,
}

impl InodeTable {
    /// With a single store, that store's root is the mount root.
    pub fn new(single_store: bool) -> InodeTable {
        InodeTable {
            next: ROOT_INO + 1,
            numbers: HashMap::default(),
            single_store,
        }
    }

    /// The number `key` has been given, if any (never hands one out).
    pub fn get(&self, key: &NodeKey) -> Option<u64> {
        match key {
            NodeKey::Root => Some(ROOT_INO),
            NodeKey::StoreRoot(0) if self.single_store => Some(ROOT_INO),
            k => self.numbers.get(k).copied(),
        }
    }

    pub fn ino(&mut self, key: NodeKey) -> u64 {
        let key = match key {
            NodeKey::StoreRoot(0) if self.single_store => NodeKey::Root,
            k => k,
        };
        if key == NodeKey::Root {
            return ROOT_INO;
        }
        if let Some(&n) = self.numbers.get(&key) {
            return n;
        }
        let n = self.next;
        self.next += 1;
        self.numbers.insert(key, n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_distinct() {
        let mut t = InodeTable::new(true);
        assert_eq!(t.ino(NodeKey::StoreRoot(0)), ROOT_INO);
        let a = t.ino(NodeKey::Image(0, "sha256:a".into()));
        let b = t.ino(NodeKey::Image(0, "sha256:b".into()));
        let a_in_other_store = t.ino(NodeKey::Image(1, "sha256:a".into()));
        assert_ne!(a, b);
        assert_ne!(a, a_in_other_store);
        assert_eq!(t.ino(NodeKey::Image(0, "sha256:a".into())), a);
    }
}
