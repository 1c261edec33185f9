//! The physical limit for "which images are in this docker-save archive": walk the tar
//! headers, seek over member data, read manifest.json and the configs, hash them.
//! Nothing else (no index kept, no tree, no FUSE). Used by the benchmark as the floor
//! imagefs is measured against.
//!
//! usage: header_walk ARCHIVE   → prints "<id> <tags...>" per image

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

fn octal(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // base-256 (GNU) for sizes of 8 GiB and more
        return field[1..].iter().fold(0u64, |a, b| (a << 8) | *b as u64);
    }
    let s = String::from_utf8_lossy(field);
    u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: header_walk ARCHIVE")?;
    let mut f = File::open(&path)?;
    let mut members: HashMap<String, (u64, u64)> = HashMap::new();
    let mut header = [0u8; 512];
    let mut long_name: Option<String> = None;
    loop {
        if f.read_exact(&mut header).is_err() || header.iter().all(|b| *b == 0) {
            break;
        }
        let size = octal(&header[124..136]);
        let data = f.stream_position()?;
        let padded = size.div_ceil(512) * 512;
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
        match header[156] {
            b'L' => {
                let mut buf = vec![0u8; size as usize];
                f.read_exact(&mut buf)?;
                long_name = Some(
                    String::from_utf8_lossy(&buf)
                        .trim_end_matches('\0')
                        .to_string(),
                );
                f.seek(SeekFrom::Start(data + padded))?;
                continue;
            }
            b'x' | b'g' => {
                f.seek(SeekFrom::Start(data + padded))?;
                continue;
            }
            _ => {}
        }
        let name = long_name.take().unwrap_or_else(|| name_of(&header));
        members.insert(name.trim_start_matches("./").to_string(), (data, size));
        f.seek(SeekFrom::Start(data + padded))?;
    }
    let read = |name: &str| -> Option<Vec<u8>> {
        let (at, size) = *members.get(name)?;
        let mut buf = vec![0u8; size as usize];
        f.read_exact_at(&mut buf, at).ok()?;
        Some(buf)
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&read("manifest.json").ok_or("no manifest.json")?)?;
    for entry in manifest.as_array().ok_or("manifest.json is not a list")? {
        let config = entry["Config"].as_str().unwrap_or_default();
        let Some(bytes) = read(config) else { continue };
        let tags: Vec<&str> = entry["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        println!(
            "sha256:{} {}",
            hex::encode(Sha256::digest(&bytes)),
            tags.join(" ")
        );
    }
    Ok(())
}
