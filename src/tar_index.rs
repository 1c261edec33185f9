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
        TarIndex::build_capturing(
            reader,
            len,
            None,
            crate::limits::Limits::default().max_members,
        )
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
    /// At most `max_members` members are indexed.
    pub fn build_file(file: &std::fs::File, len: u64, max_members: usize) -> TarIndex {
        TarIndex::walk(HeaderReader { file, pos: 0 }, len, None, max_members)
    }

    /// [`TarIndex::build`], handing small members' data to `capture` on the way.
    pub fn build_capturing<R: Read + Seek>(
        mut reader: R,
        len: u64,
        capture: Option<Capture<'_>>,
        max_members: usize,
    ) -> TarIndex {
        let pos = reader.stream_position().unwrap_or(0);
        let reader = SkimReader {
            inner: io::BufReader::with_capacity(64 * 1024, reader),
            pos,
        };
        TarIndex::walk(reader, len, capture, max_members)
    }

    /// The walk itself: headers read one by one (512 bytes, plus a GNU long name or a
    /// PAX extension, each at most [`MAX_EXTENSION`] bytes), member data skipped by
    /// seeking. Written here rather than taken from the `tar` crate, whose reader
    /// reads any extension whole into memory (a 1 GiB PAX header took 1.5-3 GiB) and
    /// has no bound on members: imagefs's memory must grow with what it shows, not
    /// with what a header claims. At most `max_members` entries are indexed.
    fn walk<R: Read + Seek>(
        mut reader: R,
        len: u64,
        mut capture: Option<Capture<'_>>,
        max_members: usize,
    ) -> TarIndex {
        let mut index = TarIndex::default();
        let mut pos = reader.stream_position().unwrap_or(0);
        let mut entry_start = pos;
        let mut ext = Extensions::default();
        let mut block = [0u8; BLOCK as usize];
        loop {
            let damaged = |index: &mut TarIndex, why: &str| {
                index.problems.push(format!(
                    "tar is damaged after {} members ({why}); members after that point are not shown",
                    index.entries.len()
                ));
            };
            match read_full(&mut reader, &mut block) {
                Ok(0) => break,
                Ok(n) if n < block.len() => {
                    if index.entries.is_empty() && n == 0 {
                        break;
                    }
                    damaged(&mut index, "a header is cut short");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    damaged(&mut index, &e.to_string());
                    break;
                }
            }
            if block.iter().all(|&b| b == 0) {
                break; // the end-of-archive blocks
            }
            let mut header = match RawHeader::parse(&block) {
                Ok(h) => h,
                Err(why) => {
                    if index.entries.is_empty() && entry_start == 0 {
                        index.problems.push(format!("not a readable tar: {why}"));
                    } else {
                        damaged(&mut index, &why);
                    }
                    break;
                }
            };
            let header_offset = pos;
            pos += BLOCK;
            let mut data_offset = pos;
            // Old GNU sparse members carry extra sparse-map blocks before their data.
            if header.typeflag == b'S' && block[482] != 0 {
                let mut more = true;
                while more {
                    match read_full(&mut reader, &mut block) {
                        Ok(n) if n == block.len() => {}
                        _ => {
                            damaged(&mut index, "a sparse map is cut short");
                            return index;
                        }
                    }
                    pos += BLOCK;
                    data_offset = pos;
                    more = block[504] != 0;
                }
            }
            if matches!(header.typeflag, b'L' | b'K' | b'x' | b'g' | b'X') {
                if header.size > MAX_EXTENSION {
                    index.problems.push(format!(
                        "an extension header (type {:?}) of {} bytes at offset {header_offset}, more than the {MAX_EXTENSION} allowed: members from there on are not shown",
                        header.typeflag as char, header.size
                    ));
                    break;
                }
                let mut data = vec![0u8; header.size as usize];
                match read_full(&mut reader, &mut data) {
                    Ok(n) if n == data.len() => {}
                    _ => {
                        damaged(&mut index, "an extension header is cut short");
                        break;
                    }
                }
                let padded = header.size.div_ceil(BLOCK) * BLOCK;
                if let Err(e) = skip(&mut reader, padded - header.size) {
                    damaged(&mut index, &e.to_string());
                    break;
                }
                pos += padded;
                match header.typeflag {
                    b'L' => ext.path = Some(until_nul(&data).to_vec()),
                    b'K' => ext.link = Some(until_nul(&data).to_vec()),
                    b'x' | b'X' => {
                        if let Err(why) = ext.pax(&data) {
                            index.problems.push(format!(
                                "a PAX header at offset {header_offset} is malformed ({why}): ignored"
                            ));
                        }
                    }
                    _ => {} // global PAX records: nothing imagefs uses
                }
                continue;
            }
            if index.entries.len() >= max_members {
                index.problems.push(format!(
                    "more than {max_members} members: the rest are not shown (see -o max_members)"
                ));
                break;
            }
            let size = ext.size.take().unwrap_or(header.size);
            let from_header = std::mem::take(&mut header.name);
            let renamable = ext.path.is_none() && header_offset == entry_start;
            let raw_name = match ext.path.take() {
                Some(p) => String::from_utf8_lossy(&p).into_owned(),
                None => String::from_utf8_lossy(&from_header).into_owned(),
            };
            let link = ext.link.take().unwrap_or(std::mem::take(&mut header.link));
            let mtime = ext.mtime.take().unwrap_or(header.mtime);
            let kind = match header.typeflag {
                b'0' | 0 | b'7' => MemberKind::File,
                b'5' => MemberKind::Dir,
                b'2' => MemberKind::Symlink(String::from_utf8_lossy(&link).into_owned()),
                b'1' => MemberKind::Hardlink(String::from_utf8_lossy(&link).into_owned()),
                _ => MemberKind::Other,
            };
            let next = data_offset.checked_add(size.div_ceil(BLOCK) * BLOCK);
            let Some(next) = next else {
                damaged(&mut index, "a member size overflows");
                break;
            };
            if kind == MemberKind::File && data_offset.checked_add(size).is_none_or(|end| end > len)
            {
                index.problems.push(format!(
                    "member {raw_name:?} is truncated: it needs bytes {data_offset}..{} but the archive ends at {len}",
                    data_offset.saturating_add(size)
                ));
                break;
            }
            let member = TarMember {
                offset: data_offset,
                size,
                kind,
                entry_start,
                header_offset,
                mtime,
                renamable,
            };
            let mut consumed = 0u64;
            if let Some(c) = capture.as_mut()
                && member.kind == MemberKind::File
                && size <= c.max_size
            {
                let mut data = vec![0u8; size as usize];
                match read_full(&mut reader, &mut data) {
                    // A short read means a truncated stream: the walk reports it next.
                    Ok(n) => {
                        consumed = n as u64;
                        if n == data.len() {
                            (c.take)(&member, &data);
                        }
                    }
                    Err(e) => {
                        damaged(&mut index, &e.to_string());
                        break;
                    }
                }
            }
            if let Err(e) = skip(&mut reader, next - data_offset - consumed) {
                if kind_is_file(&member) {
                    index
                        .problems
                        .push(format!("member {raw_name:?} is truncated: {e}"));
                } else {
                    damaged(&mut index, &e.to_string());
                }
                break;
            }
            pos = next;
            entry_start = next;
            match normalize_member_name(&raw_name) {
                Some(name) => {
                    index.push(name, member);
                    index.end_of_entries = next;
                }
                // `./`, which `tar -C dir -cf x .` writes first: the archive's root
                None if is_archive_root(&raw_name) => index.end_of_entries = next,
                None => index.problems.push(format!(
                    "member {raw_name:?} has an unsafe name (absolute, '..' or NUL): ignored"
                )),
            }
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

const BLOCK: u64 = 512;

/// A GNU long name or link, or a PAX extended header, is at most this big: real ones
/// hold a path of a few hundred bytes.
pub const MAX_EXTENSION: u64 = 1 << 20;

fn kind_is_file(m: &TarMember) -> bool {
    m.kind == MemberKind::File
}

/// Reads until `buf` is full or the stream ends; the count read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn skip<R: Seek>(r: &mut R, n: u64) -> io::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let n = i64::try_from(n).map_err(|_| io::Error::other("a member too large to skip"))?;
    r.seek(io::SeekFrom::Current(n)).map(|_| ())
}

fn until_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// What GNU long-name/long-link and PAX headers said about the next member.
#[derive(Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<u64>,
}

impl Extensions {
    /// PAX records: `LEN key=value\n`, LEN counting the whole record.
    fn pax(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            let space = data
                .iter()
                .position(|&c| c == b' ')
                .ok_or("a record without a length")?;
            let len: usize = std::str::from_utf8(&data[..space])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("a record length that is not a number")?;
            if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
                return Err("a record length that does not fit".into());
            }
            let record = &data[space + 1..len - 1];
            data = &data[len..];
            let Some(eq) = record.iter().position(|&c| c == b'=') else {
                return Err("a record without '='".into());
            };
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            let number = || {
                let text = String::from_utf8_lossy(value);
                let whole = text.split('.').next().unwrap_or("");
                whole.parse::<u64>().ok()
            };
            match key {
                b"path" => self.path = Some(value.to_vec()),
                b"linkpath" => self.link = Some(value.to_vec()),
                b"size" => self.size = Some(number().ok_or("a size that is not a number")?),
                b"mtime" => self.mtime = number(),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The fields of one 512-byte header imagefs reads.
struct RawHeader {
    typeflag: u8,
    size: u64,
    mtime: u64,
    /// The name the header itself holds: POSIX ustar headers join the prefix field.
    name: Vec<u8>,
    link: Vec<u8>,
}

impl RawHeader {
    fn parse(block: &[u8; 512]) -> Result<RawHeader, String> {
        let stored = numeric(&block[148..156]).ok_or("a checksum that is not a number")?;
        let unsigned: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        let signed: i64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
            return Err("a header checksum does not match".into());
        }
        let name = until_nul(&block[0..100]);
        let posix = &block[257..263] == b"ustar\0";
        let prefix = until_nul(&block[345..500]);
        let name = if posix && !prefix.is_empty() {
            let mut out = prefix.to_vec();
            out.push(b'/');
            out.extend_from_slice(name);
            out
        } else {
            name.to_vec()
        };
        Ok(RawHeader {
            typeflag: block[156],
            size: numeric(&block[124..136]).ok_or("a size that is not a number")?,
            mtime: numeric(&block[136..148]).unwrap_or(0),
            name,
            link: until_nul(&block[157..257]).to_vec(),
        })
    }
}

/// A numeric header field: octal digits (space or NUL padded), or GNU's base-256 for
/// values too big for octal.
fn numeric(field: &[u8]) -> Option<u64> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        if first == 0xff {
            return None; // negative
        }
        let mut v: u64 = u64::from(first & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if digits.is_empty() {
        return Some(0);
    }
    let digits = digits.split(['\0', ' ']).next()?;
    u64::from_str_radix(digits, 8).ok()
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

/// `./`, `.` or `.//`: the directory the archive was made from, not a member to show.
fn is_archive_root(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('/') && name.split('/').all(|p| p.is_empty() || p == ".")
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

    /// One raw header block, checksummed (GNU format unless `ustar`).
    fn header(name: &[u8], typeflag: u8, size: u64, ustar_prefix: Option<&[u8]>) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..107].copy_from_slice(b"0000644");
        let size_field = format!("{size:011o}");
        if size_field.len() <= 11 {
            h[124..135].copy_from_slice(size_field.as_bytes());
        } else {
            h[124] = 0x80;
            h[128..136].copy_from_slice(&size.to_be_bytes());
        }
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = typeflag;
        match ustar_prefix {
            Some(prefix) => {
                h[257..263].copy_from_slice(b"ustar\0");
                h[263..265].copy_from_slice(b"00");
                h[345..345 + prefix.len()].copy_from_slice(prefix);
            }
            None => h[257..265].copy_from_slice(b"ustar  \0"),
        }
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn padded(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.resize(data.len().div_ceil(512) * 512, 0);
        v
    }

    #[test]
    fn long_names_pax_paths_and_ustar_prefixes_are_read() {
        let long = format!("{}/config.json", "d".repeat(150));
        let mut bytes = header(b"././@LongLink", b'L', long.len() as u64 + 1, None);
        bytes.extend(padded(format!("{long}\0").as_bytes()));
        bytes.extend(header(b"trunc", b'0', 2, None));
        bytes.extend(padded(b"{}"));
        let record = format!("path={}\n", "p/".repeat(80) + "x.json");
        let record = format!("{} {record}", record.len() + 4);
        bytes.extend(header(
            b"PaxHeaders/x",
            b'x',
            record.len() as u64,
            Some(b""),
        ));
        bytes.extend(padded(record.as_bytes()));
        bytes.extend(header(b"ignored", b'0', 3, Some(b"")));
        bytes.extend(padded(b"[1]"));
        bytes.extend(header(b"name.json", b'0', 1, Some(b"pre/fix")));
        bytes.extend(padded(b"1"));
        bytes.extend(vec![0u8; 1024]);
        let idx = index(&bytes);
        assert!(idx.problems.is_empty(), "{:?}", idx.problems);
        let m = idx.get(&long).unwrap();
        assert_eq!(&bytes[m.offset as usize..][..2], b"{}");
        assert!(!m.renamable, "a long name is not in the header");
        let pax = "p/".repeat(80) + "x.json";
        assert_eq!(idx.get(&pax).unwrap().size, 3);
        assert!(idx.get("ignored").is_none());
        let m = idx.get("pre/fix/name.json").unwrap();
        assert!(m.renamable);
        assert_eq!(idx.len(), 3);
    }

    #[test]
    fn a_huge_extension_header_is_refused_unread() {
        // a 1 GiB PAX header (and a GNU long name) with no bytes behind it: refused on
        // its size, never allocated
        for flag in [b'x', b'L'] {
            let mut bytes = header(b"first.json", b'0', 2, None);
            bytes.extend(padded(b"{}"));
            bytes.extend(header(b"PaxHeaders/big", flag, 1 << 30, None));
            let idx = index(&bytes);
            assert!(idx.get("first.json").is_some());
            assert!(
                idx.problems
                    .iter()
                    .any(|p| p.contains("more than the 1048576 allowed")),
                "{:?}",
                idx.problems
            );
        }
    }

    #[test]
    fn members_beyond_the_limit_are_not_indexed() {
        let names: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        let bytes = tar_bytes(&files, &[]);
        let idx = TarIndex::walk(Cursor::new(&bytes), bytes.len() as u64, None, 5);
        assert_eq!(idx.len(), 5);
        assert!(
            idx.problems
                .iter()
                .any(|p| p.contains("more than 5 members"))
        );
    }

    #[test]
    fn sizes_in_base_256_and_bad_checksums() {
        assert_eq!(numeric(b"00000001750\0"), Some(1000));
        assert_eq!(numeric(b"   1750 \0"), Some(1000));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..].copy_from_slice(&(9u64 << 30).to_be_bytes());
        assert_eq!(numeric(&big), Some(9 << 30));
        assert_eq!(numeric(&[0xff; 12]), None);
        let mut bytes = header(b"a.json", b'0', 2, None);
        bytes[0] = b'b'; // the checksum no longer matches
        bytes.extend(padded(b"{}"));
        let idx = index(&bytes);
        assert!(idx.is_empty());
        assert!(idx.problems[0].contains("checksum"), "{:?}", idx.problems);
    }

    #[test]
    fn unsafe_names_are_ignored() {
        assert_eq!(normalize_member_name("./a//b/"), Some("a/b".into()));
        assert_eq!(normalize_member_name("../x"), None);
        assert_eq!(normalize_member_name("/etc/passwd"), None);
        assert_eq!(normalize_member_name("a/../../b"), None);
        for root in ["./", ".", ".//", "./."] {
            assert!(is_archive_root(root), "{root}");
        }
        for not_root in ["/", "", "./..", "a", "/./"] {
            assert!(!is_archive_root(not_root), "{not_root}");
        }
    }

    #[test]
    fn the_archive_root_is_no_member_and_no_problem() {
        let mut bytes = header(b"./", b'5', 0, None);
        bytes.extend(header(b"./a.json", b'0', 2, None));
        bytes.extend(padded(b"{}"));
        let idx = index(&bytes);
        assert!(idx.problems.is_empty(), "{:?}", idx.problems);
        assert_eq!(
            idx.entries()
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["a.json"]
        );
    }
}
