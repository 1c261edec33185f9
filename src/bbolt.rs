//! A small read-only reader of bbolt files (containerd's meta.db), that takes no lock.
//!
//! A running containerd holds meta.db with an exclusive flock, so imagefs reads it
//! page by page with pread. bbolt writes copy-on-write: a transaction writes new pages,
//! then one of the two meta pages (the one of its txid's parity). A reader picks the
//! valid meta page (magic, version, checksum) with the highest txid and walks the tree
//! it roots. Pages of that snapshot are only reused by a writer after a *later*
//! transaction has committed, so a walk that ends with the same txid it started with
//! read one consistent snapshot; otherwise it is retried. Every offset, length and
//! page id is checked before use: damage is an error, never a panic or garbage.
//!
//! The format (etcd-io/bbolt, internal/common): a page is a 16-byte header (id u64,
//! flags u16, count u16, overflow u32) then elements; leaf elements are (flags, pos,
//! ksize, vsize) u32s and branch elements (pos u32, ksize u32, pgid u64), `pos` counted
//! from the element itself. A bucket's value is (root pgid u64, sequence u64), and for
//! an inline bucket (root 0) the bucket's page follows in the value.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const BUCKET_FLAG: u32 = 0x01;
const MAX_DEPTH: usize = 64;
/// Pages one read transaction may read: a busy node's 100 MiB meta.db has 25,000. A
/// file whose pages repeat under each other (a branch naming one child many times,
/// at every level) would otherwise cost a walk exponential in its depth.
pub const MAX_PAGES: usize = 1 << 20;
const MAX_PAGE_SIZE: u32 = 1 << 20;
const ATTEMPTS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a bbolt file, or both meta pages are damaged")]
    NoValidMeta,
    #[error("damaged page {page}: {why}")]
    Damaged { page: u64, why: &'static str },
    #[error("the file kept changing while it was read ({0} attempts)")]
    Unstable(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub root: u64,
    /// The high-water mark: no valid page id is at or above it.
    pub pgid: u64,
    pub txid: u64,
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses the meta of a page (header included); None unless it is valid.
pub fn parse_meta(page: &[u8]) -> Option<Meta> {
    let m = page.get(PAGE_HEADER..PAGE_HEADER + 64)?;
    if u32_at(m, 0)? != MAGIC || u32_at(m, 4)? != VERSION || fnv1a64(&m[..56]) != u64_at(m, 56)? {
        return None;
    }
    let page_size = u32_at(m, 8)?;
    if !(512..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_power_of_two() {
        return None;
    }
    Some(Meta {
        page_size,
        root: u64_at(m, 16)?,
        pgid: u64_at(m, 40)?,
        txid: u64_at(m, 48)?,
    })
}

/// Where a bucket's tree is: a page, or an inline page carried in its parent's value.
#[derive(Clone, Debug)]
pub enum Bucket {
    Page(u64),
    Inline(Vec<u8>),
}

/// One key of a bucket: a value, or a nested bucket.
#[derive(Clone, Debug)]
pub enum Item {
    Value(Vec<u8>),
    Bucket(Bucket),
}

pub struct BoltFile {
    file: Backing,
}

/// The bytes read: the file itself, or (for the fuzzer) a buffer.
enum Backing {
    File(File),
    Bytes(Vec<u8>),
}

impl Backing {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            Backing::File(f) => f.read_at(buf, offset),
            Backing::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let n = buf.len().min(b.len() - start);
                buf[..n].copy_from_slice(&b[start..start + n]);
                Ok(n)
            }
        }
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], offset + done as u64)? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read")),
                n => done += n,
            }
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        match self {
            Backing::File(f) => Ok(f.metadata()?.len()),
            Backing::Bytes(b) => Ok(b.len() as u64),
        }
    }
}

/// One consistent snapshot (valid while its txid holds).
pub struct Tx<'a> {
    db: &'a BoltFile,
    pub meta: Meta,
    len: u64,
    /// Pages read so far, against [`MAX_PAGES`].
    pages_read: std::cell::Cell<usize>,
}

impl BoltFile {
    /// A bbolt file already opened (by the containment layer).
    pub fn from_file(file: File) -> BoltFile {
        BoltFile {
            file: Backing::File(file),
        }
    }

    /// A bbolt image in memory (the fuzzer's way in).
    pub fn from_bytes(bytes: Vec<u8>) -> BoltFile {
        BoltFile {
            file: Backing::Bytes(bytes),
        }
    }

    /// Walks every bucket, as deep as it goes: what the fuzzer exercises.
    pub fn walk_all(&self) -> Result<usize, BoltError> {
        self.read(|tx| {
            let mut stack = vec![(tx.root(), 0usize)];
            let mut seen = 0;
            while let Some((bucket, depth)) = stack.pop() {
                for (_, item) in tx.items(&bucket)? {
                    seen += 1;
                    if let Item::Bucket(b) = item
                        && depth < MAX_DEPTH
                    {
                        stack.push((b, depth + 1));
                    }
                }
            }
            Ok(seen)
        })
    }

    /// The current valid meta with the highest txid.
    pub fn meta(&self) -> Result<Meta, BoltError> {
        let mut first = vec![0u8; 4096];
        let n = self.file.read_at(&mut first, 0)?;
        first.truncate(n);
        let m0 = parse_meta(&first);
        // the second meta page sits one page in; try the page size either meta states
        let mut best = m0;
        let sizes: Vec<u32> = [m0.map(|m| m.page_size), Some(4096)]
            .into_iter()
            .flatten()
            .collect();
        for size in sizes {
            let mut second = vec![0u8; PAGE_HEADER + 64];
            let n = self.file.read_at(&mut second, size as u64)?;
            second.truncate(n);
            if let Some(m1) = parse_meta(&second).filter(|m| m.page_size == size)
                && best.is_none_or(|b| m1.txid > b.txid)
            {
                best = Some(m1);
            }
        }
        best.ok_or(BoltError::NoValidMeta)
    }

    /// Runs `f` on a snapshot; retried while a writer commits in between.
    pub fn read<T>(&self, f: impl Fn(&Tx<'_>) -> Result<T, BoltError>) -> Result<T, BoltError> {
        for attempt in 0..ATTEMPTS {
            let meta = self.meta()?;
            let len = self.file.len()?;
            let tx = Tx {
                db: self,
                meta,
                len,
                pages_read: std::cell::Cell::new(0),
            };
            let result = f(&tx);
            let after = self.meta()?;
            if after.txid == meta.txid {
                return result;
            }
            // a commit happened while we read: whatever we saw may mix snapshots
            std::thread::sleep(std::time::Duration::from_millis(1 << attempt.min(6)));
        }
        Err(BoltError::Unstable(ATTEMPTS))
    }
}

impl Tx<'_> {
    pub fn root(&self) -> Bucket {
        Bucket::Page(self.meta.root)
    }

    /// A whole page (overflow included), checked against its id and the file.
    fn page(&self, id: u64) -> Result<Vec<u8>, BoltError> {
        let damaged = |why| BoltError::Damaged { page: id, why };
        let read = self.pages_read.get() + 1;
        if read > MAX_PAGES {
            return Err(damaged(
                "more pages read than the file can hold trees of (pages repeat under each other?)",
            ));
        }
        self.pages_read.set(read);
        if id < 2 || id >= self.meta.pgid {
            return Err(damaged("page id out of range"));
        }
        let ps = self.meta.page_size as u64;
        let at = id.checked_mul(ps).ok_or(damaged("page offset overflows"))?;
        let mut head = vec![0u8; ps as usize];
        if at + ps > self.len {
            return Err(damaged("page beyond the end of the file"));
        }
        self.db.file.read_exact_at(&mut head, at)?;
        if u64_at(&head, 0) != Some(id) {
            return Err(damaged("page does not carry its own id"));
        }
        let overflow = u32_at(&head, 12).unwrap_or(0) as u64;
        if overflow == 0 {
            return Ok(head);
        }
        if id + overflow >= self.meta.pgid {
            return Err(damaged("overflow beyond the high-water mark"));
        }
        let total = (1 + overflow) * ps;
        if at + total > self.len || total > 256 << 20 {
            return Err(damaged("overflow beyond the end of the file"));
        }
        let mut all = vec![0u8; total as usize];
        self.db.file.read_exact_at(&mut all, at)?;
        Ok(all)
    }

    /// Every key of a bucket, in order.
    pub fn items(&self, bucket: &Bucket) -> Result<Vec<(Vec<u8>, Item)>, BoltError> {
        let mut out = Vec::new();
        match bucket {
            Bucket::Page(id) => self.walk(*id, 0, &mut Default::default(), &mut out)?,
            Bucket::Inline(page) => leaf_items(page, 0, &mut out)?,
        }
        Ok(out)
    }

    /// Walks one bucket's tree; a page met twice in it is damage (each page of a
    /// real tree has one parent).
    fn walk(
        &self,
        id: u64,
        depth: usize,
        seen: &mut std::collections::HashSet<u64>,
        out: &mut Vec<(Vec<u8>, Item)>,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(BoltError::Damaged {
                page: id,
                why: "tree deeper than any real one (a loop?)",
            });
        }
        if !seen.insert(id) {
            return Err(BoltError::Damaged {
                page: id,
                why: "a page appears twice in one tree",
            });
        }
        let page = self.page(id)?;
        match u16_at(&page, 8) {
            Some(LEAF) => leaf_items(&page, id, out),
            Some(BRANCH) => {
                for (_, child) in branch_children(&page, id)? {
                    self.walk(child, depth + 1, seen, out)?;
                }
                Ok(())
            }
            _ => Err(BoltError::Damaged {
                page: id,
                why: "neither a leaf nor a branch page",
            }),
        }
    }

    /// The nested bucket `key` of `bucket`, if there is one.
    pub fn bucket(&self, bucket: &Bucket, key: &[u8]) -> Result<Option<Bucket>, BoltError> {
        Ok(self.items(bucket)?.into_iter().find_map(|(k, v)| match v {
            Item::Bucket(b) if k == key => Some(b),
            _ => None,
        }))
    }

    /// The value `key` of `bucket`, if there is one.
    pub fn get(&self, bucket: &Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BoltError> {
        Ok(self.items(bucket)?.into_iter().find_map(|(k, v)| match v {
            Item::Value(v) if k == key => Some(v),
            _ => None,
        }))
    }
}

/// The (key, child page) pairs of a branch page.
fn branch_children(page: &[u8], id: u64) -> Result<Vec<(Vec<u8>, u64)>, BoltError> {
    let damaged = |why| BoltError::Damaged { page: id, why };
    let count = u16_at(page, 10).ok_or(damaged("short page"))? as usize;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let e = PAGE_HEADER + i * ELEMENT;
        let (pos, ksize, child) = (
            u32_at(page, e).ok_or(damaged("element beyond the page"))? as usize,
            u32_at(page, e + 4).ok_or(damaged("element beyond the page"))? as usize,
            u64_at(page, e + 8).ok_or(damaged("element beyond the page"))?,
        );
        let key = page
            .get(e + pos..e + pos + ksize)
            .ok_or(damaged("key beyond the page"))?;
        out.push((key.to_vec(), child));
    }
    Ok(out)
}

/// The items of a leaf page (a page of the file, or an inline bucket's page).
fn leaf_items(page: &[u8], id: u64, out: &mut Vec<(Vec<u8>, Item)>) -> Result<(), BoltError> {
    let damaged = |why| BoltError::Damaged { page: id, why };
    if u16_at(page, 8) != Some(LEAF) {
        return Err(damaged("not a leaf page"));
    }
    let count = u16_at(page, 10).ok_or(damaged("short page"))? as usize;
    for i in 0..count {
        let e = PAGE_HEADER + i * ELEMENT;
        let field = |at| u32_at(page, e + at).ok_or(damaged("element beyond the page"));
        let (flags, pos, ksize, vsize) = (
            field(0)?,
            field(4)? as usize,
            field(8)? as usize,
            field(12)? as usize,
        );
        let k0 = e.checked_add(pos).ok_or(damaged("bad offset"))?;
        let key = page
            .get(k0..k0 + ksize)
            .ok_or(damaged("key beyond the page"))?;
        let value = page
            .get(k0 + ksize..k0 + ksize + vsize)
            .ok_or(damaged("value beyond the page"))?;
        let item = if flags & BUCKET_FLAG != 0 {
            let root = u64_at(value, 0).ok_or(damaged("bucket header too short"))?;
            if root == 0 {
                Item::Bucket(Bucket::Inline(
                    value
                        .get(16..)
                        .ok_or(damaged("inline bucket too short"))?
                        .to_vec(),
                ))
            } else {
                Item::Bucket(Bucket::Page(root))
            }
        } else {
            Item::Value(value.to_vec())
        };
        out.push((key.to_vec(), item));
    }
    Ok(())
}

/// Go's unsigned varint (containerd stores sizes that way).
pub fn uvarint(b: &[u8]) -> Option<u64> {
    let mut x = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        x |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(x);
        }
    }
    None
}

/// Go's signed varint (zig-zag), as containerd's `size` fields are written.
pub fn varint(b: &[u8]) -> Option<i64> {
    let u = uvarint(b)?;
    Some(((u >> 1) as i64) ^ -((u & 1) as i64))
}

#[cfg(test)]
pub(crate) mod tests {
    /// imagefs itself opens meta.db through the containment layer; tests by path.
    fn open_db(path: &std::path::Path) -> io::Result<BoltFile> {
        Ok(BoltFile::from_file(File::open(path)?))
    }
    use super::*;

    /// A meta page as bbolt writes it.
    pub(crate) fn meta_page(page_size: u32, root: u64, pgid: u64, txid: u64) -> Vec<u8> {
        let mut p = vec![0u8; page_size as usize];
        p[0..8].copy_from_slice(&(txid % 2).to_le_bytes());
        p[8..10].copy_from_slice(&0x04u16.to_le_bytes());
        let m = &mut p[16..];
        m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        m[4..8].copy_from_slice(&VERSION.to_le_bytes());
        m[8..12].copy_from_slice(&page_size.to_le_bytes());
        m[16..24].copy_from_slice(&root.to_le_bytes());
        m[40..48].copy_from_slice(&pgid.to_le_bytes());
        m[48..56].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv1a64(&m[..56]);
        m[56..64].copy_from_slice(&sum.to_le_bytes());
        p
    }

    /// A leaf page with (key, value, is_bucket) items.
    pub(crate) fn leaf_page(id: u64, page_size: usize, items: &[(&[u8], &[u8], bool)]) -> Vec<u8> {
        let mut p = vec![0u8; page_size];
        p[0..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&LEAF.to_le_bytes());
        p[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        let mut data = PAGE_HEADER + items.len() * ELEMENT;
        for (i, (k, v, bucket)) in items.iter().enumerate() {
            let e = PAGE_HEADER + i * ELEMENT;
            let flags: u32 = if *bucket { BUCKET_FLAG } else { 0 };
            p[e..e + 4].copy_from_slice(&flags.to_le_bytes());
            p[e + 4..e + 8].copy_from_slice(&((data - e) as u32).to_le_bytes());
            p[e + 8..e + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            p[e + 12..e + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            p[data..data + k.len()].copy_from_slice(k);
            p[data + k.len()..data + k.len() + v.len()].copy_from_slice(v);
            data += k.len() + v.len();
        }
        p
    }

    /// What a bucket holds, for building a database: values and nested buckets.
    pub(crate) enum Entry {
        Value(Vec<u8>),
        Bucket(Items),
    }

    /// A bucket's (key, entry) pairs, in any order.
    pub(crate) type Items = Vec<(Vec<u8>, Entry)>;

    /// A database file as bbolt writes one: two metas (the newer at `txid`), then one
    /// leaf page per bucket, the root bucket's first.
    pub(crate) fn database(root: Vec<(Vec<u8>, Entry)>, txid: u64) -> Vec<u8> {
        const PS: usize = 4096;
        fn put(items: Vec<(Vec<u8>, Entry)>, pages: &mut Vec<Vec<u8>>) -> u64 {
            let id = 2 + pages.len() as u64;
            pages.push(Vec::new());
            let mut leaf: Vec<(Vec<u8>, Vec<u8>, bool)> = items
                .into_iter()
                .map(|(key, entry)| match entry {
                    Entry::Value(v) => (key, v, false),
                    Entry::Bucket(children) => {
                        let mut header = put(children, pages).to_le_bytes().to_vec();
                        header.extend_from_slice(&[0u8; 8]);
                        (key, header, true)
                    }
                })
                .collect();
            leaf.sort_by(|a, b| a.0.cmp(&b.0));
            let refs: Vec<(&[u8], &[u8], bool)> = leaf
                .iter()
                .map(|(k, v, b)| (k.as_slice(), v.as_slice(), *b))
                .collect();
            pages[(id - 2) as usize] = leaf_page(id, PS, &refs);
            id
        }
        let mut pages = Vec::new();
        let root = put(root, &mut pages);
        let high = 2 + pages.len() as u64;
        let mut file = [
            meta_page(PS as u32, root, high, txid - 1),
            meta_page(PS as u32, root, high, txid),
        ]
        .concat();
        // each meta goes in the slot its txid picks
        if txid % 2 == 0 {
            let (a, b) = file.split_at(PS);
            file = [b, a].concat();
        }
        file.extend(pages.concat());
        file
    }

    /// Go's signed varint, as containerd writes sizes.
    pub(crate) fn put_varint(v: i64) -> Vec<u8> {
        let mut u = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            if u < 0x80 {
                out.push(u as u8);
                return out;
            }
            out.push((u as u8) | 0x80);
            u >>= 7;
        }
    }

    #[test]
    fn a_built_database_reads_back() {
        let db = database(
            vec![(
                b"v1".to_vec(),
                Entry::Bucket(vec![
                    (b"b".to_vec(), Entry::Value(put_varint(-3))),
                    (
                        b"a".to_vec(),
                        Entry::Bucket(vec![(b"k".to_vec(), Entry::Value(put_varint(300)))]),
                    ),
                ]),
            )],
            8,
        );
        let f = BoltFile::from_bytes(db);
        assert_eq!(f.meta().unwrap().txid, 8);
        let (a, b) = f
            .read(|tx| {
                let v1 = tx.bucket(&tx.root(), b"v1")?.unwrap();
                let a = tx.bucket(&v1, b"a")?.unwrap();
                Ok((tx.get(&a, b"k")?.unwrap(), tx.get(&v1, b"b")?.unwrap()))
            })
            .unwrap();
        assert_eq!((varint(&a), varint(&b)), (Some(300), Some(-3)));
    }

    fn inline_bucket(items: &[(&[u8], &[u8], bool)]) -> Vec<u8> {
        let mut v = vec![0u8; 16]; // root 0: inline
        let page = leaf_page(0, 512, items);
        v.extend_from_slice(&page[..200]);
        v
    }

    fn db(pages: Vec<Vec<u8>>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        std::fs::write(&path, pages.concat()).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_nested_and_inline_buckets_from_the_newest_meta() {
        let ps = 4096u32;
        let target = inline_bucket(&[
            (b"digest", b"sha256:abc", false),
            (b"size", &[0x84, 0x02], false),
        ]);
        let image_page = leaf_page(3, ps as usize, &[(b"target", &target, true)]);
        let mut image_bucket = 3u64.to_le_bytes().to_vec();
        image_bucket.extend_from_slice(&[0u8; 8]);
        let root = leaf_page(
            2,
            ps as usize,
            &[(b"img", &image_bucket, true), (b"version", b"3", false)],
        );
        // meta 0 is older and points at garbage; meta 1 is the newest
        let (_d, path) = db(vec![
            meta_page(ps, 99, 4, 6),
            meta_page(ps, 2, 4, 7),
            root,
            image_page,
        ]);
        let f = open_db(&path).unwrap();
        assert_eq!(f.meta().unwrap().txid, 7);
        let (digest, size) = f
            .read(|tx| {
                let img = tx.bucket(&tx.root(), b"img")?.unwrap();
                let t = tx.bucket(&img, b"target")?.unwrap();
                Ok((
                    tx.get(&t, b"digest")?.unwrap(),
                    tx.get(&t, b"size")?.unwrap(),
                ))
            })
            .unwrap();
        assert_eq!(digest, b"sha256:abc");
        assert_eq!(varint(&size), Some(130));
    }

    #[test]
    fn a_damaged_meta_is_passed_over_and_damaged_pages_are_errors() {
        let ps = 4096u32;
        let root = leaf_page(2, ps as usize, &[(b"k", b"v", false)]);
        let mut newer = meta_page(ps, 2, 3, 9);
        newer[40] ^= 0xff; // checksum no longer matches: torn
        let (_d, path) = db(vec![meta_page(ps, 2, 3, 8), newer, root.clone()]);
        let f = open_db(&path).unwrap();
        assert_eq!(f.meta().unwrap().txid, 8);
        // a page that does not carry its id, and an element pointing out of its page
        let mut bad = root.clone();
        bad[0] = 7;
        let (_d2, p2) = db(vec![meta_page(ps, 2, 3, 8), meta_page(ps, 2, 3, 1), bad]);
        assert!(
            open_db(&p2)
                .unwrap()
                .read(|tx| tx.items(&tx.root()))
                .is_err()
        );
        let mut bad = root;
        bad[PAGE_HEADER + 4..PAGE_HEADER + 8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let (_d3, p3) = db(vec![meta_page(ps, 2, 3, 8), meta_page(ps, 2, 3, 1), bad]);
        assert!(
            open_db(&p3)
                .unwrap()
                .read(|tx| tx.items(&tx.root()))
                .is_err()
        );
        // not bbolt at all
        let (_d4, p4) = db(vec![vec![0x42; 8192]]);
        assert!(matches!(
            open_db(&p4).unwrap().meta(),
            Err(BoltError::NoValidMeta)
        ));
    }

    /// A branch page of `count` elements, every one naming `child`.
    fn branch_page(id: u64, page_size: usize, child: u64, count: usize) -> Vec<u8> {
        let mut p = vec![0u8; page_size];
        p[0..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&BRANCH.to_le_bytes());
        p[10..12].copy_from_slice(&(count as u16).to_le_bytes());
        for i in 0..count {
            let e = PAGE_HEADER + i * ELEMENT;
            // an empty key at the element itself
            p[e..e + 4].copy_from_slice(&0u32.to_le_bytes());
            p[e + 4..e + 8].copy_from_slice(&0u32.to_le_bytes());
            p[e + 8..e + 16].copy_from_slice(&child.to_le_bytes());
        }
        p
    }

    /// Ten levels of branch pages, each naming the next level 200 times: a walk
    /// that follows every name reads 200^10 pages. It must stop, at once.
    #[test]
    fn pages_shared_under_each_other_end_the_walk_at_once() {
        let ps = 4096usize;
        let levels = 10u64;
        let mut pages = vec![
            meta_page(ps as u32, 2, 2 + levels + 1, 4),
            meta_page(ps as u32, 2, 2 + levels + 1, 3),
        ];
        for l in 0..levels {
            pages.push(branch_page(2 + l, ps, 3 + l, 200));
        }
        pages.push(leaf_page(2 + levels, ps, &[(b"k", b"v", false)]));
        let (_d, path) = db(pages);
        let f = open_db(&path).unwrap();
        let started = std::time::Instant::now();
        let err = f.read(|tx| tx.items(&tx.root())).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // every tree of one read counts against the same page budget
        let tx_pages = f
            .read(|tx| {
                for _ in 0..=MAX_PAGES {
                    if let Err(e) = tx.items(&Bucket::Page(2 + levels)) {
                        return Ok(e.to_string());
                    }
                }
                Ok(String::new())
            })
            .unwrap();
        assert!(tx_pages.contains("more pages read"), "{tx_pages}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // a cheap stand-in for the fuzzer: every prefix and many corruptions of a
        // valid file are read without a panic
        let ps = 4096u32;
        let root = leaf_page(
            2,
            ps as usize,
            &[(b"a", b"1", false), (b"b", &[0u8; 16], true)],
        );
        let good = [meta_page(ps, 2, 3, 5), meta_page(ps, 2, 3, 4), root].concat();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let mut seed = 1u64;
        for i in 0..400 {
            let mut bytes = good.clone();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (seed >> 33) as usize % bytes.len();
            bytes[at] ^= (seed >> 7) as u8 | 1;
            if i % 7 == 0 {
                bytes.truncate(at);
            }
            std::fs::write(&path, &bytes).unwrap();
            let f = open_db(&path).unwrap();
            let _ = f.read(|tx| {
                for (_, item) in tx.items(&tx.root())? {
                    if let Item::Bucket(b) = item {
                        let _ = tx.items(&b);
                    }
                }
                Ok(())
            });
        }
    }
}
