//! The physical limit for "which images are in this docker-save archive": walk the tar
//! headers, seek over member data, read manifest.json and the configs, hash them.
//! Nothing else (no index kept, no tree, no FUSE). Used by the benchmark as the floor
//! imagefs is measured against. A gzip or zstd archive is decompressed in one pass
//! (flate2 on zlib-rs, as imagefs uses), its member data read and dropped: the floor
//! for a first mount of a compressed archive.
//!
//! usage: header_walk ARCHIVE   → prints "<id> <tags...>" per image

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

fn octal(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // base-256 (GNU) for sizes of 8 GiB and more
        return field[1..].iter().fold(0u64, |a, b| (a << 8) | *b as u64);
    }
    let s = String::from_utf8_lossy(field);
    u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
}

/// The archive as a stream: a plain file seeks over member data, a compressed one
/// decompresses it and drops it.
enum Stream {
    Plain(File, u64),
    Decoded(Box<dyn Read>, u64),
}

impl Stream {
    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(f, n) => {
                *n += buf.len() as u64;
                f.read_exact(buf)
            }
            Stream::Decoded(r, n) => {
                *n += buf.len() as u64;
                r.read_exact(buf)
            }
        }
    }

    /// Tar bytes the walk needed (headers, manifest.json, configs), for the
    /// benchmark's "bytes read" floor.
    fn needed(&self) -> u64 {
        match self {
            Stream::Plain(_, n) | Stream::Decoded(_, n) => *n,
        }
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        match self {
            Stream::Plain(f, _) => f.seek(SeekFrom::Current(n as i64)).map(|_| ()),
            Stream::Decoded(r, _) => {
                let mut scratch = vec![0u8; 256 * 1024];
                let mut left = n;
                while left > 0 {
                    let k = r.read(&mut scratch[..left.min(256 * 1024) as usize])?;
                    if k == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    left -= k as u64;
                }
                Ok(())
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: header_walk ARCHIVE")?;
    let mut f = File::open(&path)?;
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    let mut stream = if magic.starts_with(&[0x1f, 0x8b]) {
        let input = BufReader::with_capacity(256 * 1024, f);
        Stream::Decoded(Box::new(flate2::read::MultiGzDecoder::new(input)), 0)
    } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Stream::Decoded(Box::new(zstd::stream::read::Decoder::new(f)?), 0)
    } else {
        Stream::Plain(f, 0)
    };
    // manifest.json and the *.json members (configs), kept as they pass
    let mut kept: HashMap<String, Vec<u8>> = HashMap::new();
    let mut header = [0u8; 512];
    let mut long_name: Option<String> = None;
    loop {
        if stream.read_exact(&mut header).is_err() || header.iter().all(|b| *b == 0) {
            break;
        }
        let size = octal(&header[124..136]);
        let padding = size.div_ceil(512) * 512 - size;
        let name_of = |h: &[u8]| {
            let n = String::from_utf8_lossy(&h[..100])
                .trim_end_matches('\0')
                .to_string();
            let prefix = String::from_utf8_lossy(&h[345..500])
                .trim_end_matches('\0')
                .to_string();
            if &h[257..262] == b"ustar" && !prefix.is_empty() {
                format!("{prefix}/{n}")
            } else {
                n
            }
        };
        let read_data = |stream: &mut Stream| -> std::io::Result<Vec<u8>> {
            let mut buf = vec![0u8; size as usize];
            stream.read_exact(&mut buf)?;
            stream.skip(padding)?;
            Ok(buf)
        };
        match header[156] {
            b'L' => {
                let buf = read_data(&mut stream)?;
                long_name = Some(
                    String::from_utf8_lossy(&buf)
                        .trim_end_matches('\0')
                        .to_string(),
                );
                continue;
            }
            b'x' | b'g' => {
                stream.skip(size + padding)?;
                continue;
            }
            _ => {}
        }
        let name = long_name.take().unwrap_or_else(|| name_of(&header));
        let name = name.trim_start_matches("./").to_string();
        if (name == "manifest.json" || name.ends_with(".json")) && size < 16 << 20 {
            kept.insert(name, read_data(&mut stream)?);
        } else {
            stream.skip(size + padding)?;
        }
    }
    eprintln!("needed {} bytes", stream.needed());
    let manifest: serde_json::Value =
        serde_json::from_slice(kept.get("manifest.json").ok_or("no manifest.json")?)?;
    for entry in manifest.as_array().ok_or("manifest.json is not a list")? {
        let config = entry["Config"].as_str().unwrap_or_default();
        let Some(bytes) = kept.get(config) else {
            continue;
        };
        let tags: Vec<&str> = entry["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        println!(
            "sha256:{} {}",
            hex::encode(Sha256::digest(bytes)),
            tags.join(" ")
        );
    }
    Ok(())
}
