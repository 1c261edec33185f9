//! Writing a tar archive's metadata (manifest.json, repositories, index.json) so that
//! a crash at any point, including kill -9 of imagefs, leaves an archive that every
//! reader accepts, in the old state or the new one.
//!
//! **In place, through a spare slot** (tag, untag, re-tag): the new content goes into a
//! spare member, padded with JSON whitespace to the member's fixed size, under a name
//! no reader looks at; then one aligned 512-byte header write names it (with a higher
//! generation in the header's mtime), and a second gives the old member the spare name.
//! Between the two header writes the name appears twice, and each copy is a valid state
//! (imagefs takes the higher generation; podman the first; docker load the last).
//! A 512-byte aligned write lies within one page, so SIGKILL cannot tear it. The
//! archive grows only when no spare slot is large enough: a new one is appended behind
//! the last entry, data first and header last, so a crash leaves the old end.
//!
//! **Full rewrite** (deleting an image, or a member that cannot be renamed in place):
//! a new archive beside the old one, member data copied with copy_file_range (cheap on
//! filesystems that share extents), fsync, rename, fsync of the directory.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};

use tracing::info;

use super::tar_store::ArchiveFile;
use crate::store_file::{StoreDir, crash_point};
use crate::tar_index::{MemberKind, TarIndex, TarMember};

/// The name of a spare slot. Readers look members up by name, so they pass over it;
/// `tar -x` would extract it as a dotfile of spaces.
pub const SPARE_NAME: &str = ".imagefs-spare";

/// What a write cost: for the log and the benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    pub bytes_written: u64,
    pub full_rewrite: bool,
}

const BLOCK: u64 = 512;

fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Replaces the content of metadata members in place, one after the other, through
/// spare slots. `file` is the archive, opened read-write and locked exclusively;
/// `index` is fresh (indexed under that lock). Each new content must be JSON (it is
/// padded with spaces). Returns None when a member cannot be replaced in place (the
/// caller then rewrites the archive).
pub fn replace_in_place(
    file: &File,
    mut index: TarIndex,
    updates: &[(&str, &[u8])],
) -> io::Result<Option<WriteStats>> {
    // Nothing is written unless every member can be replaced in place.
    let all_renamable = updates.iter().all(|(name, _)| {
        index
            .get(name)
            .is_some_and(|m| m.renamable && m.kind == MemberKind::File)
    });
    if !all_renamable {
        return Ok(None);
    }
    let mut stats = WriteStats::default();
    for (name, content) in updates {
        let Some(active) = index.get(name).cloned() else {
            return Ok(None);
        };
        if !active.renamable || active.kind != MemberKind::File {
            return Ok(None);
        }
        let need = content.len() as u64;
        // A spare slot large enough, else a new one at the end.
        let spare = index
            .entries()
            .iter()
            .filter(|(n, m)| {
                n == SPARE_NAME && m.renamable && m.kind == MemberKind::File && m.size >= need
            })
            .min_by_key(|(_, m)| m.size)
            .map(|(_, m)| m.clone());
        let spare = match spare {
            Some(s) => s,
            None => {
                let size = round_up((need * 2).max(4096));
                let (member, written) = append_spare(file, index.end_of_entries, size)?;
                stats.bytes_written += written;
                member
            }
        };
        // 1. the content, padded, into the spare (invisible to readers)
        let mut data = content.to_vec();
        data.resize(spare.size as usize, b' ');
        file.write_all_at(&data, spare.offset)?;
        crash_point("spare data written");
        file.sync_data()?;
        crash_point("spare data synced");
        stats.bytes_written += data.len() as u64;
        // 2. the spare takes the name, one generation up
        let generation = active.mtime.max(spare.mtime) + 1;
        rename_header(file, spare.header_offset, name, generation)?;
        crash_point("spare named");
        file.sync_data()?;
        crash_point("spare name synced");
        // 3. the old member becomes a spare, and so does any older copy of the name a
        //    crash between steps 2 and 3 of an earlier write left behind
        let stale: Vec<u64> = index
            .entries()
            .iter()
            .filter(|(n, m)| n == name && m.renamable && m.header_offset != spare.header_offset)
            .map(|(_, m)| m.header_offset)
            .collect();
        for offset in &stale {
            rename_header(file, *offset, SPARE_NAME, 0)?;
            crash_point("old copy renamed to spare");
        }
        file.sync_data()?;
        crash_point("switch synced");
        stats.bytes_written += (1 + stale.len() as u64) * BLOCK;
        // the next update sees this one (a write adds a member at most)
        index = reindex(file, index.len() + 2)?;
    }
    Ok(Some(stats))
}

/// Completes switches a crash interrupted (a name present twice): every copy but the
/// newest becomes a spare. Returns the names repaired. Same locking as for a write.
/// The older copies of names present twice: a switch a crash interrupted.
fn interrupted(index: &TarIndex) -> impl Iterator<Item = (&String, &TarMember)> {
    index.entries().iter().filter_map(|(name, member)| {
        let older = name != SPARE_NAME
            && member.renamable
            && index
                .get(name)
                .is_some_and(|w| w.header_offset != member.header_offset);
        older.then_some((name, member))
    })
}

pub fn has_interrupted_switch(index: &TarIndex) -> bool {
    interrupted(index).next().is_some()
}

pub fn finish_interrupted(file: &File, index: &TarIndex) -> io::Result<Vec<String>> {
    let mut repaired = Vec::new();
    for (name, member) in interrupted(index) {
        rename_header(file, member.header_offset, SPARE_NAME, 0)?;
        repaired.push(name.clone());
    }
    if !repaired.is_empty() {
        file.sync_data()?;
    }
    Ok(repaired)
}

fn reindex(file: &File, max_members: usize) -> io::Result<TarIndex> {
    let len = file.metadata()?.len();
    Ok(TarIndex::build_file(file, len, max_members))
}

/// Rewrites one header's name (and mtime), keeping everything else.
fn rename_header(file: &File, offset: u64, name: &str, mtime: u64) -> io::Result<()> {
    let mut raw = [0u8; 512];
    file.read_exact_at(&mut raw, offset)?;
    let mut header = tar::Header::new_old();
    header.as_mut_bytes().copy_from_slice(&raw);
    header.set_path(name)?;
    header.set_mtime(mtime);
    header.set_cksum();
    file.write_all_at(header.as_bytes(), offset)
}

/// Appends an empty spare slot behind the last entry. Go's tar reader (podman,
/// skopeo) wants both end-of-archive blocks zero, so nothing non-zero may appear
/// behind the end before the header that covers it: first zeros over the slot's
/// extent and a new end (zeros over zeros: valid at every instant), then the header
/// (one aligned block), which makes a spare of zeros appear whole.
fn append_spare(file: &File, end: u64, size: u64) -> io::Result<(TarMember, u64)> {
    let data_at = end + BLOCK;
    let zeros = vec![0u8; (size + 2 * BLOCK) as usize];
    file.write_all_at(&zeros, data_at)?;
    crash_point("new spare's extent zeroed");
    file.sync_data()?;
    let mut header = tar::Header::new_ustar();
    header.set_path(SPARE_NAME)?;
    header.set_size(size);
    header.set_mode(0o444);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    file.write_all_at(header.as_bytes(), end)?;
    crash_point("new spare's header written");
    file.sync_data()?;
    Ok((
        TarMember {
            offset: data_at,
            size,
            kind: MemberKind::File,
            entry_start: end,
            header_offset: end,
            mtime: 0,
            renamable: true,
        },
        zeros.len() as u64 + BLOCK,
    ))
}

/// Writes a new archive at `path`: the entries of `index` whose name `keep` accepts
/// (raw, extension headers and all), then `add` as new members, then the end of
/// archive. Spare slots are dropped. Atomic: temp file, fsync, rename, dir fsync.
pub fn rewrite(
    at: &ArchiveFile,
    old: &File,
    index: &TarIndex,
    keep: impl Fn(&str) -> bool,
    add: &[(&str, &[u8])],
) -> io::Result<WriteStats> {
    let tmp = StoreDir::temp_name(&at.name);
    let mode = old.metadata()?.permissions().mode() & 0o7777;
    let result = (|| {
        let mut out = at.dir.create_new(&tmp, mode)?;
        let mut pos = 0u64;
        for (name, member) in index.entries() {
            if name == SPARE_NAME || add.iter().any(|(n, _)| n == name) || !keep(name) {
                continue;
            }
            let (start, end) = (member.entry_start, member.entry_end());
            copy_range(old, &out, start, pos, end - start)?;
            if pos == 0 {
                // one point stands for all copies: none is visible before the rename
                crash_point("rewrite: first member copied");
            }
            pos += end - start;
        }
        io::Seek::seek(&mut out, io::SeekFrom::Start(pos))?;
        let mut builder = tar::Builder::new(&mut out);
        for (name, content) in add {
            let mut header = tar::Header::new_ustar();
            header.set_size(content.len() as u64);
            header.set_mode(0o444);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, name, *content)?;
        }
        builder.finish()?;
        drop(builder);
        out.flush()?;
        crash_point("rewrite: written, not synced");
        out.sync_all()?;
        let written = out.metadata()?.len();
        drop(out);
        crash_point("rewrite: synced, not renamed");
        at.dir.rename(&tmp, &at.name)?;
        crash_point("rewrite: renamed");
        Ok(WriteStats {
            bytes_written: written,
            full_rewrite: true,
        })
    })();
    if result.is_err() {
        let _ = at.dir.remove_file(&tmp);
    }
    if let Ok(s) = &result {
        info!(archive = %at.shown.display(), bytes = s.bytes_written, "archive rewritten in full");
    }
    result
}

/// Copies a byte range between files in the kernel (sharing extents where the
/// filesystem can), falling back to read/write.
fn copy_range(from: &File, to: &File, from_off: u64, to_off: u64, len: u64) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut src = (from_off + done) as libc::loff_t;
        let mut dst = (to_off + done) as libc::loff_t;
        let want = (len - done).min(1 << 30) as usize;
        // SAFETY: both descriptors are open files we own; the offsets are ours.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut src,
                to.as_raw_fd(),
                &mut dst,
                want,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP)
            ) {
                return copy_by_hand(from, to, from_off + done, to_off + done, len - done);
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive shorter than its index",
            ));
        }
        done += n as u64;
    }
    Ok(())
}

fn copy_by_hand(from: &File, to: &File, from_off: u64, to_off: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = buf.len().min((len - done) as usize);
        from.read_exact_at(&mut buf[..n], from_off + done)?;
        to.write_all_at(&buf[..n], to_off + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar_index::tests::tar_bytes;
    use std::fs::OpenOptions;
    use std::path::Path;

    fn index_of(path: &Path) -> TarIndex {
        reindex(&File::open(path).unwrap(), 1000).unwrap()
    }

    fn member(path: &Path, name: &str) -> Vec<u8> {
        let idx = index_of(path);
        let m = idx.get(name).unwrap().clone();
        let mut buf = vec![0u8; m.size as usize];
        File::open(path)
            .unwrap()
            .read_exact_at(&mut buf, m.offset)
            .unwrap();
        buf
    }

    /// What other tar readers see: the tar crate (GNU tar's view: the last member of a
    /// name wins on extraction).
    fn names_in_order(path: &Path) -> Vec<String> {
        let mut a = tar::Archive::new(File::open(path).unwrap());
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn in_place_replacement_keeps_a_valid_tar_and_grows_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(
            &p,
            tar_bytes(
                &[
                    ("layer.tar", &[1u8; 3000]),
                    ("manifest.json", b"[{\"RepoTags\":[\"a:1\"]}]"),
                ],
                &[],
            ),
        )
        .unwrap();
        let len0 = std::fs::metadata(&p).unwrap().len();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let s1 = replace_in_place(
            &f,
            index_of(&p),
            &[("manifest.json", b"[{\"RepoTags\":[]}]")],
        )
        .unwrap()
        .unwrap();
        assert!(!s1.full_rewrite);
        let v: serde_json::Value = serde_json::from_slice(&member(&p, "manifest.json")).unwrap();
        assert_eq!(v, serde_json::json!([{"RepoTags": []}]));
        // the old member became the spare: the second write reuses it, no growth
        let len1 = std::fs::metadata(&p).unwrap().len();
        let s2 = replace_in_place(
            &f,
            index_of(&p),
            &[("manifest.json", b"[{\"RepoTags\":[\"b:2\"]}]")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len1);
        assert!(s2.bytes_written < 2048, "{s2:?}");
        assert!(len1 - len0 < 16 * 1024);
        let v: serde_json::Value = serde_json::from_slice(&member(&p, "manifest.json")).unwrap();
        assert_eq!(v, serde_json::json!([{"RepoTags": ["b:2"]}]));
        // one manifest.json for every reader; the layer untouched
        let names = names_in_order(&p);
        assert_eq!(
            names.iter().filter(|n| *n == "manifest.json").count(),
            1,
            "{names:?}"
        );
        assert_eq!(member(&p, "layer.tar"), vec![1u8; 3000]);
    }

    #[test]
    fn a_crash_between_the_header_writes_leaves_two_valid_states() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(&p, tar_bytes(&[("manifest.json", b"[1]")], &[])).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        // step 1 and 2 by hand: a spare named manifest.json, the old one still there
        let idx = index_of(&p);
        let (spare, _) = append_spare(&f, idx.end_of_entries, 4096).unwrap();
        let mut data = b"[2]".to_vec();
        data.resize(4096, b' ');
        f.write_all_at(&data, spare.offset).unwrap();
        rename_header(&f, spare.header_offset, "manifest.json", 5).unwrap();
        // imagefs takes the higher generation
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&member(&p, "manifest.json")).unwrap(),
            serde_json::json!([2])
        );
        // and the archive is still a tar that lists both
        assert_eq!(
            names_in_order(&p)
                .iter()
                .filter(|n| *n == "manifest.json")
                .count(),
            2
        );
        // the next write cleans up: one manifest.json again
        replace_in_place(&f, index_of(&p), &[("manifest.json", b"[3]")])
            .unwrap()
            .unwrap();
        let names = names_in_order(&p);
        assert_eq!(
            names.iter().filter(|n| *n == "manifest.json").count(),
            1,
            "{names:?}"
        );
    }

    #[test]
    fn full_rewrite_drops_members_and_spares() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(
            &p,
            tar_bytes(
                &[
                    ("keep", b"k"),
                    ("drop", &[2u8; 5000]),
                    ("manifest.json", b"[]"),
                ],
                &[("link", "keep")],
            ),
        )
        .unwrap();
        let f = File::open(&p).unwrap();
        let s = rewrite(
            &ArchiveFile::locate(&p, &Default::default()).unwrap(),
            &f,
            &index_of(&p),
            |n| n != "drop",
            &[("manifest.json", b"[\"new\"]")],
        )
        .unwrap();
        assert!(s.full_rewrite);
        assert_eq!(names_in_order(&p), ["keep", "link", "manifest.json"]);
        assert_eq!(member(&p, "manifest.json"), b"[\"new\"]");
        assert_eq!(member(&p, "keep"), b"k");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
