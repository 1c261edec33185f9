//! The tar index: one pass over an archive's headers, seeking over member data, so that
//! for an uncompressed archive layer bytes are never read. Members are then read by
//! offset (pread) from the archive file.
//!
//! The index never fails as a whole: a truncated or corrupt archive yields the members
//! found before the damage, and `problems` says what was wrong, so that the rest of the
//! store can still be shown.

use std::hash::BuildHasher;
use std::io::{self, Read, Seek};

use serde::{Deserialize, Serialize};

/// Where one member's data lies in the (uncompressed) archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarMember {
    pub offset: u64,
    pub size: u64,
    pub kind: MemberKind,
    /// Where this member's entry begins (its first header, extension headers
    /// included): entries are contiguous, so it is where the previous one ended.
    pub entry_start: u64,
    /// Its own (last) header, which carries the name when `renamable`.
    pub header_offset: u64,
    /// The header's mtime: imagefs's generation when a name appears twice.
    pub mtime: u64,
    /// True when the name is in the header itself (no long-name or PAX path
    /// extension), so one 512-byte write renames the member.
    pub renamable: bool,
}

impl TarMember {
    /// Where the entry ends: its data rounded up to the 512-byte block.
    pub fn entry_end(&self) -> u64 {
        self.offset + self.size.div_ceil(512) * 512
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberKind {
    File,
    Dir,
    /// A symbolic link; the target is relative to the member's directory (podman's
    /// `<v1id>/layer.tar -> ../<diffid>.tar`).
    Symlink(String),
    /// A hard link; the target is a member name from the archive root.
    Hardlink(String),
    Other,
}

#[derive(Debug, Default)]
pub struct TarIndex {
    /// Every entry, in archive order.
    entries: Vec<(String, TarMember)>,
    /// Name → the entry that counts: the highest generation (header mtime), the later
    /// one on a tie (as `tar -x` leaves it). A table of positions in `entries`, hashed
    /// by their names, so that no name is stored twice: a kept index of 6,000 members
    /// is loaded without copying a name (the copies were a tenth of a mount's time).
    members: hashbrown::HashTable<usize>,
    hasher: foldhash::fast::RandomState,
    /// Where the end-of-archive blocks begin.
    pub end_of_entries: u64,
    /// Human-readable problems met while indexing, each naming the member.
    pub problems: Vec<String>,
}

const MAX_LINK_DEPTH: usize = 8;

/// A buffered reader whose forward seeks stay in its buffer when they can (as
/// `BufReader::seek_relative` does): the tar walk skips small members without
/// refilling, and only large ones cost a new read. A plain `BufReader` drops its
/// buffer on every seek, which reads 64 KiB per header.
struct SkimReader<R> {
    inner: io::BufReader<R>,
    pos: u64,
}

impl<R: Read + Seek> Read for SkimReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for SkimReader<R> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        match to {
            io::SeekFrom::Current(n) => {
                let target = self.pos.checked_add_signed(n).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")
                })?;
                self.inner.seek_relative(n)?;
                self.pos = target;
            }
            other => self.pos = self.inner.seek(other)?,
        }
        Ok(self.pos)
    }
}

/// Called with the data of each regular member of at most `max_size` bytes, met
/// during the walk: a compressed archive keeps these (manifests, configs) in its
/// persisted index, so that they never need decompressing again.
pub struct Capture<'a> {
    pub max_size: u64,
    pub take: &'a mut dyn FnMut(&TarMember, &[u8]),
}

/// Reads a file at a position it keeps (pread), seeking by arithmetic alone.
struct HeaderReader<'a> {
    file: &'a std::fs::File,
    pos: u64,
}

impl Read for HeaderReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for HeaderReader<'_> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let target = match to {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::Current(n) => self.pos.checked_add_signed(n),
            io::SeekFrom::End(n) => self.file.metadata()?.len().checked_add_signed(n),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

impl TarIndex {
    /// Walks the headers of `reader`, whose total length is `len`.
    pub fn build<R: Read + Seek>(reader: R, len: u64) -> TarIndex {
        TarIndex::build_capturing(reader, len, None)
    }

    /// An index from entries stored earlier (a persisted index), in archive order.
    pub fn from_parts(
        entries: Vec<(String, TarMember)>,
        end_of_entries: u64,
        problems: Vec<String>,
    ) -> TarIndex {
        let mut index = TarIndex {
            end_of_entries,
            problems,
            ..TarIndex::default()
        };
        for (name, member) in entries {
            index.push(name, member);
        }
        index
    }

    fn push(&mut self, name: String, member: TarMember) {
        let i = self.entries.len();
        let hash = self.hasher.hash_one(name.as_str());
        let mtime = member.mtime;
        self.entries.push((name, member));
        let TarIndex {
            entries,
            members,
            hasher,
            ..
        } = self;
        let name = entries[i].0.as_str();
        match members.find_mut(hash, |&j| entries[j].0 == name) {
            Some(j) => {
                if mtime >= entries[*j].1.mtime {
                    *j = i;
                }
            }
            None => {
                members.insert_unique(hash, i, |&j| hasher.hash_one(entries[j].0.as_str()));
            }
        }
    }

    /// The entry that counts for an already normalised name.
    fn member(&self, name: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(name);
        self.members
            .find(hash, |&j| self.entries[j].0 == name)
            .copied()
    }

    /// For a stream whose length was not known during the walk: drops the trailing
    /// members whose data runs past `len`, as [`TarIndex::build`] does when it knows.
    pub fn truncate_to(&mut self, len: u64) {
        let keep = self
            .entries
            .iter()
            .take_while(|(_, m)| m.kind != MemberKind::File || m.offset + m.size <= len)
            .count();
        if keep == self.entries.len() {
            return;
        }
        let (name, m) = &self.entries[keep];
        self.problems.push(format!(
            "member {name:?} is truncated: it needs bytes {}..{} but the archive ends at {len}",
            m.offset,
            m.offset + m.size
        ));
        let entries: Vec<_> = self.entries.drain(..keep).collect();
        let end = entries.last().map_or(0, |(_, m)| m.entry_end());
        *self = TarIndex::from_parts(entries, end, std::mem::take(&mut self.problems));
    }

    /// Walks the headers of an archive file of `len` bytes with one positioned read
    /// per header and nothing read ahead: member data is never read, so the bytes
    /// read are the headers' own, wherever they lie (a buffered walk reads a buffer's
    /// worth at each header: 64 KiB per member on an archive of big layers).
    pub fn build_file(file: &std::fs::File, len: u64) -> TarIndex {
        TarIndex::walk(HeaderReader { file, pos: 0 }, len, None)
    }

    /// [`TarIndex::build`], handing small members' data to `capture` on the way.
    pub fn build_capturing<R: Read + Seek>(
        mut reader: R,
        len: u64,
        capture: Option<Capture<'_>>,
    ) -> TarIndex {
        let pos = reader.stream_position().unwrap_or(0);
        let reader = SkimReader {
            inner: io::BufReader::with_capacity(64 * 1024, reader),
            pos,
        };
        TarIndex::walk(reader, len, capture)
    }

    fn walk<R: Read + Seek>(reader: R, len: u64, mut capture: Option<Capture<'_>>) -> TarIndex {
        let mut index = TarIndex::default();
        let mut archive = tar::Archive::new(reader);
        let entries = match archive.entries_with_seek() {
            Ok(e) => e,
            Err(e) => {
                index.problems.push(format!("not a readable tar: {e}"));
                return index;
            }
        };
        let mut next_start = 0u64;
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    index.problems.push(format!(
                        "tar is damaged after {} members ({e}); members after that point are not shown",
                        index.entries.len()
                    ));
                    break;
                }
            };
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let offset = entry.raw_file_position();
            let size = entry.size();
            let header_offset = entry.raw_header_position();
            let entry_start = next_start;
            next_start = offset + size.div_ceil(512) * 512;
            let pax_path = entry
                .pax_extensions()
                .ok()
                .flatten()
                .is_some_and(|mut exts| exts.any(|x| x.is_ok_and(|x| x.key() == Ok("path"))));
            let header = entry.header();
            let renamable = !pax_path
                && header_offset == entry_start
                && header.path_bytes().as_ref() == raw_name.as_bytes();
            let mtime = header.mtime().unwrap_or(0);
            let Some(name) = normalize_member_name(&raw_name) else {
                index.problems.push(format!(
                    "member {raw_name:?} has an unsafe name (absolute, '..' or NUL): ignored"
                ));
                continue;
            };
            let kind = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => MemberKind::File,
                tar::EntryType::Directory => MemberKind::Dir,
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    if header.entry_type() == tar::EntryType::Symlink {
                        MemberKind::Symlink(target)
                    } else {
                        MemberKind::Hardlink(target)
                    }
                }
                _ => MemberKind::Other,
            };
            if kind == MemberKind::File && offset.checked_add(size).is_none_or(|end| end > len) {
                index.problems.push(format!(
                    "member {name:?} is truncated: it needs bytes {offset}..{} but the archive ends at {len}",
                    offset.saturating_add(size)
                ));
                break;
            }
            let member = TarMember {
                offset,
                size,
                kind,
                entry_start,
                header_offset,
                mtime,
                renamable,
            };
            if let Some(c) = capture.as_mut()
                && member.kind == MemberKind::File
                && size <= c.max_size
            {
                let mut data = Vec::with_capacity(size as usize);
                // A short read means a truncated stream: the walk reports it next.
                if entry.read_to_end(&mut data).is_ok() && data.len() as u64 == size {
                    (c.take)(&member, &data);
                }
            }
            index.push(name, member);
            index.end_of_entries = next_start;
        }
        index
    }

    /// Every entry, in archive order (names normalised).
    pub fn entries(&self) -> &[(String, TarMember)] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|&i| self.entries[i].0.as_str())
    }

    /// The member itself, links not followed.
    pub fn get(&self, name: &str) -> Option<&TarMember> {
        normalize_member_name(name)
            .and_then(|n| self.member(&n))
            .map(|i| &self.entries[i].1)
    }

    /// The regular file `name` names, following symbolic and hard links inside the
    /// archive. A link that leaves the archive root, loops, or ends nowhere gives
    /// `None`: nothing outside the archive is ever read.
    pub fn resolve(&self, name: &str) -> Option<(&str, &TarMember)> {
        let mut current = normalize_member_name(name)?;
        for _ in 0..MAX_LINK_DEPTH {
            let (key, member) = self
                .member(&current)
                .map(|i| (&self.entries[i].0, &self.entries[i].1))?;
            match &member.kind {
                MemberKind::File => return Some((key.as_str(), member)),
                MemberKind::Symlink(target) => {
                    let dir = match current.rfind('/') {
                        Some(i) => &current[..i],
                        None => "",
                    };
                    current = join_within_root(dir, target)?;
                }
                MemberKind::Hardlink(target) => current = normalize_member_name(target)?,
                MemberKind::Dir | MemberKind::Other => return None,
            }
        }
        None
    }
}

/// `./a//b/` → `a/b`. `None` for names that are absolute, contain `..`, NUL, or are
/// empty: such a member is never looked up or followed.
pub fn normalize_member_name(name: &str) -> Option<String> {
    if name.starts_with('/') || name.contains('\0') {
        return None;
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

/// Joins a relative link target to a member directory, refusing to climb above the
/// archive root.
fn join_within_root(dir: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// Builds a tar in memory: (name, contents) files and (name, target) symlinks.
    pub(crate) fn tar_bytes(files: &[(&str, &[u8])], symlinks: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o444);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        for (name, target) in symlinks {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn index(bytes: &[u8]) -> TarIndex {
        TarIndex::build(Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn finds_members_by_offset() {
        let bytes = tar_bytes(
            &[("./manifest.json", b"[]"), ("a/layer.tar", &[7u8; 1000])],
            &[],
        );
        let idx = index(&bytes);
        assert!(idx.problems.is_empty(), "{:?}", idx.problems);
        let m = idx.get("manifest.json").unwrap();
        assert_eq!(
            &bytes[m.offset as usize..(m.offset + m.size) as usize],
            b"[]"
        );
        assert_eq!(idx.get("a/layer.tar").unwrap().size, 1000);
    }

    #[test]
    fn follows_podman_layer_symlinks_but_not_out_of_the_archive() {
        let bytes = tar_bytes(
            &[("abc.tar", b"layer")],
            &[
                ("v1/layer.tar", "../abc.tar"),
                ("v1/escape", "../../etc/passwd"),
                ("loop", "loop"),
            ],
        );
        let idx = index(&bytes);
        let (name, m) = idx.resolve("v1/layer.tar").unwrap();
        assert_eq!((name, m.size), ("abc.tar", 5));
        assert!(idx.resolve("v1/escape").is_none());
        assert!(idx.resolve("loop").is_none());
    }

    #[test]
    fn truncated_archive_keeps_what_came_before() {
        let bytes = tar_bytes(&[("first.json", b"{}"), ("big", &[1u8; 5000])], &[]);
        let cut = &bytes[..2048];
        let idx = index(cut);
        assert!(idx.get("first.json").is_some());
        assert!(idx.get("big").is_none());
        assert!(
            idx.problems
                .iter()
                .any(|p| p.contains("truncated") || p.contains("damaged")),
            "{:?}",
            idx.problems
        );
    }

    #[test]
    fn garbage_is_reported_not_panicked_on() {
        let idx = index(&[0xffu8; 4096]);
        assert!(idx.is_empty());
        assert!(!idx.problems.is_empty());
    }

    #[test]
    fn unsafe_names_are_ignored() {
        assert_eq!(normalize_member_name("./a//b/"), Some("a/b".into()));
        assert_eq!(normalize_member_name("../x"), None);
        assert_eq!(normalize_member_name("/etc/passwd"), None);
        assert_eq!(normalize_member_name("a/../../b"), None);
    }
}
