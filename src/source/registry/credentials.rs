//! Registry credentials from the files users already have: podman's auth.json and
//! Docker's config.json (the command line says which files, in which order). Only the
//! `auths` entries are read; credential helpers are not run.

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;
use tracing::{debug, warn};

/// A user name and a password (or an identity token), for Basic and for the token
/// endpoint. Never printed: `Debug` shows the user only.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    secret: String,
    /// Which file they came from, for messages.
    pub from: PathBuf,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({} from {})", self.user, self.from.display())
    }
}

impl Credentials {
    pub fn new(user: &str, secret: &str, from: PathBuf) -> Credentials {
        Credentials {
            user: user.to_string(),
            secret: secret.to_string(),
            from,
        }
    }

    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.user, self.secret);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// An auth file's key names a host (`registry.example:5000`), a URL of it
/// (`https://registry.example:5000/v1/`), or a repository of it (podman:
/// `registry.example/team/app`, the longest match wins).
fn key_matches(key: &str, host: &str, repo: &str) -> Option<usize> {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    let k = k.strip_suffix("/v1").or(k.strip_suffix("/v2")).unwrap_or(k);
    let full = format!("{host}/{repo}");
    if k == host {
        return Some(0);
    }
    (full == k || full.starts_with(&format!("{k}/"))).then_some(k.len())
}

/// Credentials for `host`'s repository `repo`: the first file with an entry for it.
/// A file that is missing is passed over; one that cannot be read or parsed is said
/// so, and passed over.
pub fn find(files: &[PathBuf], host: &str, repo: &str) -> Option<Credentials> {
    for file in files {
        let bytes = match crate::store_file::read_config_file(file, 1 << 20) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                warn!("{}: {e}: not read for registry credentials", file.display());
                continue;
            }
        };
        let parsed: AuthFile = match serde_json::from_slice(&bytes) {
            Ok(p) => p,
            Err(e) => {
                warn!("{}: not an auth file: {e}", file.display());
                continue;
            }
        };
        let best = parsed
            .auths
            .iter()
            .filter_map(|(k, v)| key_matches(k, host, repo).map(|n| (n, v)))
            .max_by_key(|(n, _)| *n);
        let Some((_, entry)) = best else { continue };
        let pair = match (&entry.auth, &entry.username, &entry.password) {
            (Some(a), _, _) if !a.is_empty() => base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|s| {
                    s.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                }),
            (_, Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => None,
        };
        match pair {
            Some((user, secret)) => {
                debug!(user = %user, "registry {host}: credentials from {}", file.display());
                return Some(Credentials::new(&user, &secret, file.clone()));
            }
            None => warn!(
                "{}: the entry for {host} holds no user:password: passed over",
                file.display()
            ),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_file_with_an_entry_wins_and_secrets_are_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let podman = dir.path().join("auth.json");
        let docker = dir.path().join("config.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &podman,
            format!(
                r#"{{"auths": {{"reg.example:5000/team": {{"auth": "{}"}},
                              "reg.example:5000": {{"auth": "{}"}}}}}}"#,
                b64("teamuser:s3cret"),
                b64("hostuser:other")
            ),
        )
        .unwrap();
        std::fs::write(
            &docker,
            format!(
                r#"{{"auths": {{"https://other.example/v1/": {{"auth": "{}"}}}}, "credsStore": "desktop"}}"#,
                b64("docker:pw")
            ),
        )
        .unwrap();
        let files = vec![dir.path().join("missing.json"), podman.clone(), docker];
        let c = find(&files, "reg.example:5000", "team/app").unwrap();
        assert_eq!(
            c.user, "teamuser",
            "the repository's entry is the longer match"
        );
        assert_eq!(
            find(&files, "reg.example:5000", "solo").unwrap().user,
            "hostuser"
        );
        assert_eq!(find(&files, "other.example", "x").unwrap().user, "docker");
        assert!(find(&files, "nobody.example", "x").is_none());
        assert_eq!(
            c.basic_header(),
            format!("Basic {}", b64("teamuser:s3cret"))
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(
            key_matches("reg.example:5000/tea", "reg.example:5000", "team/app"),
            None
        );
    }
}
