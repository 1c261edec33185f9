//! Registry credentials from the files users already have: podman's auth.json and
//! Docker's config.json (the command line says which files, in which order). A file's
//! credential helper for the host (`credHelpers`, else `credsStore`) is asked first,
//! as Docker does, by the helpers' protocol: `docker-credential-NAME get` with the
//! host on stdin and `{"Username", "Secret"}` on stdout; then its `auths` entries.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tracing::{debug, warn};

/// A user name and a password, or an identity token, for Basic and for the token
/// endpoint. Never printed: `Debug` shows the user only.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    secret: String,
    /// An OAuth2 refresh token (`identitytoken`, or a helper's `<token>` user): the
    /// token endpoint is asked with it, by POST, in place of Basic.
    pub identity_token: bool,
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
            identity_token: false,
            from,
        }
    }

    /// An identity token (what `docker login` keeps for registries that issue them).
    pub fn identity(token: &str, from: PathBuf) -> Credentials {
        Credentials {
            user: "<token>".to_string(),
            secret: token.to_string(),
            identity_token: true,
            from,
        }
    }

    /// The refresh token, for the token endpoint's POST form.
    pub fn refresh_token(&self) -> Option<&str> {
        self.identity_token.then_some(self.secret.as_str())
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
    /// Per registry host, the helper that holds its credentials.
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
    /// The helper for every other registry.
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// What a helper prints for `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The program a helper name stands for, looked up in PATH as Docker looks it up;
/// None for a name that could reach elsewhere (a path, `..`, a space).
fn helper_program(name: &str) -> Option<String> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    plain.then(|| format!("docker-credential-{name}"))
}

/// The most a helper may print.
const HELPER_OUTPUT: u64 = 64 << 10;

/// Asks the credential helper `name` for `host`'s credentials, waiting `timeout` at
/// most. None when it has none, or fails (said so, without its output on success,
/// which holds the secret).
fn ask_helper(name: &str, host: &str, file: &Path, timeout: Duration) -> Option<Credentials> {
    let from = format!("{}: credential helper {name:?}", file.display());
    let Some(program) = helper_program(name) else {
        warn!("{from}: not a helper name: not run");
        return None;
    };
    let mut child = match Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            warn!("{from}: {program}: {e}: not asked for {host}");
            return None;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // a helper that exits without reading is seen by its answer, not here
        let _ = stdin.write_all(host.as_bytes());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        let _ = crate::threads::spawn_background("credential-helper", move || {
            let mut out = Vec::new();
            let _ = stdout.take(HELPER_OUTPUT).read_to_end(&mut out);
            let _ = tx.send(out);
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => break None,
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        warn!("{from}: {program} did not answer for {host} within {timeout:?}: killed");
        return None;
    };
    // a process the helper started may hold its stdout open: wait no longer than this
    let out = rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_default();
    if !status.success() {
        // helpers print why on stdout ("credentials not found in native keychain")
        let why = String::from_utf8_lossy(&out);
        let why: String = why.trim().chars().take(200).collect();
        debug!("{from}: {program} has nothing for {host} ({status}: {why})");
        return None;
    }
    let answer: HelperAnswer = match serde_json::from_slice(&out) {
        Ok(a) => a,
        Err(e) => {
            warn!("{from}: {program} answered for {host} with no credentials: {e}");
            return None;
        }
    };
    let file = file.to_path_buf();
    match (answer.username.as_str(), answer.secret.as_str()) {
        // older helpers answer "not found" with empty strings and success
        (_, "") => {
            debug!("{from}: {program} has nothing for {host}");
            None
        }
        ("<token>", token) => {
            debug!("registry {host}: an identity token from {program}");
            Some(Credentials::identity(token, file))
        }
        (user, secret) => {
            debug!(user, "registry {host}: credentials from {program}");
            Some(Credentials::new(user, secret, file))
        }
    }
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

/// Credentials for `host`'s repository `repo`: the first file with a helper that has
/// them, or an entry for them. A file that is missing is passed over; one that cannot
/// be read or parsed is said so, and passed over. A helper may take `timeout`.
pub fn find(files: &[PathBuf], host: &str, repo: &str, timeout: Duration) -> Option<Credentials> {
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
        let helper = parsed
            .cred_helpers
            .iter()
            .find(|(k, _)| key_matches(k, host, repo) == Some(0))
            .map(|(_, v)| v)
            .or(parsed.creds_store.as_ref());
        if let Some(name) = helper
            && let Some(c) = ask_helper(name, host, file, timeout)
        {
            return Some(c);
        }
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
        if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            debug!("registry {host}: an identity token from {}", file.display());
            return Some(Credentials::identity(token, file.clone()));
        }
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
        let c = find(
            &files,
            "reg.example:5000",
            "team/app",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            c.user, "teamuser",
            "the repository's entry is the longer match"
        );
        assert_eq!(
            find(&files, "reg.example:5000", "solo", Duration::from_secs(5))
                .unwrap()
                .user,
            "hostuser"
        );
        assert_eq!(
            find(&files, "other.example", "x", Duration::from_secs(5))
                .unwrap()
                .user,
            "docker"
        );
        assert!(find(&files, "nobody.example", "x", Duration::from_secs(5)).is_none());
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

    #[test]
    fn identity_tokens_are_read_and_helpers_must_be_plain_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        // a helper that is not installed is said so and passed over, for the entry
        std::fs::write(
            &file,
            r#"{"auths": {"reg.example": {"identitytoken": "idt-1"}},
                "credHelpers": {"reg.example": "imagefs-no-such-helper"}}"#,
        )
        .unwrap();
        let c = find(
            std::slice::from_ref(&file),
            "reg.example",
            "a",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(c.refresh_token(), Some("idt-1"));
        assert!(!format!("{c:?}").contains("idt-1"));
        let password = Credentials::new("u", "p", file.clone());
        assert_eq!(password.refresh_token(), None);
        for name in ["../../bin/sh", "a/b", "", "x y", "..", "/bin/sh"] {
            assert_eq!(helper_program(name), None, "{name:?}");
        }
        for (name, program) in [
            ("pass", "docker-credential-pass"),
            ("ecr-login", "docker-credential-ecr-login"),
            ("osxkeychain", "docker-credential-osxkeychain"),
        ] {
            assert_eq!(helper_program(name).as_deref(), Some(program));
        }
    }
}
