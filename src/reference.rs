//! Parsing and normalising image references (`busybox` →
//! `docker.io/library/busybox:latest`), following the grammar of
//! distribution/reference that Docker, podman and containerd all use.
//!
//! A normalised reference is also a safe path: every component is checked against the
//! grammar, so none can be empty, `.`, `..`, or contain `/` or NUL.

use std::fmt;

/// A canonical `domain/path:tag` reference: what by-tag/ shows.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TagRef {
    /// `docker.io`, `localhost`, `localhost:5000`, `quay.io`, ...
    pub domain: ShortStr,
    /// Repository path below the domain: `library/busybox`, `whoami/web`.
    pub path: ShortStr,
    pub tag: ShortStr,
}

/// A string held inline when it has at most 24 bytes, as nearly every domain,
/// repository path and tag has: a store of 270,000 tags held 810,000 allocations for
/// them as Strings.
pub type ShortStr = compact_str::CompactString;

/// What a reference string turned out to be. Only `Tag` gets a by-tag entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Tag(TagRef),
    /// `name@sha256:...` (with or without a tag): a digest reference.
    Digest {
        name: String,
        digest: String,
    },
    /// A bare `sha256:<hex>` image ID, as containerd's CRI records it.
    Id(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {why}")]
pub struct ReferenceError {
    pub input: String,
    pub why: &'static str,
}

const DEFAULT_DOMAIN: &str = "docker.io";
const MAX_NAME_LEN: usize = 255;

/// The longest file name the tree shows: Linux's NAME_MAX.
pub const NAME_MAX: usize = 255;

impl TagRef {
    /// The by-tag/ path components: domain, path components, and `name:tag` last.
    pub fn components(&self) -> Vec<String> {
        let mut out = vec![self.domain.to_string()];
        let mut parts: Vec<&str> = self.path.split('/').collect();
        let last = parts.pop().unwrap_or_default();
        out.extend(parts.iter().map(|s| s.to_string()));
        out.push(format!("{last}:{}", self.tag));
        out
    }

    /// The last of [`TagRef::components`]: `busybox:latest`.
    /// Whether [`TagRef::file_name`] fits in [`NAME_MAX`]: a repository name of 255
    /// bytes and a tag of 128 make a longer one, which no Linux file system takes, so
    /// `cp -r` and `tar` of by-tag/ would fail on it. Such a tag is not shown under
    /// by-tag/ (it stays in `user.image.tags`), and the catalog says so once.
    pub fn file_name_fits(&self) -> bool {
        let last = self.path.rsplit('/').next().unwrap_or_default();
        last.len() + 1 + self.tag.len() <= NAME_MAX
    }

    pub fn file_name(&self) -> String {
        let last = self.path.rsplit('/').next().unwrap_or_default();
        format!("{last}:{}", self.tag)
    }

    /// `domain/path` without the tag.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl fmt::Display for TagRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.domain, self.path, self.tag)
    }
}

/// Parses any reference string a store may hold and normalises it the way Docker does.
pub fn parse(input: &str) -> Result<Parsed, ReferenceError> {
    let err = |why| ReferenceError {
        input: input.to_string(),
        why,
    };
    if input.is_empty() {
        return Err(err("empty"));
    }
    if let Some(hex) = input.strip_prefix("sha256:") {
        if is_hex_digest(hex, 64) {
            return Ok(Parsed::Id(input.to_string()));
        }
        return Err(err("sha256: without 64 hex digits"));
    }
    let (rest, digest) = match input.split_once('@') {
        Some((r, d)) => {
            if !is_digest(d) {
                return Err(err("malformed digest after @"));
            }
            (r, Some(d))
        }
        None => (input, None),
    };
    // The tag is after the last ':' that follows the last '/' (a ':' before the
    // first '/' is a registry port).
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag
        && !is_tag(t)
    {
        return Err(err("malformed tag"));
    }
    let (domain, path) = split_domain(name);
    if !is_domain(&domain) {
        return Err(err("malformed registry host"));
    }
    if path.is_empty() || !path.split('/').all(is_path_component) {
        return Err(err("malformed repository name"));
    }
    if domain.len() + 1 + path.len() > MAX_NAME_LEN {
        return Err(err("repository name longer than 255 characters"));
    }
    if let Some(d) = digest {
        return Ok(Parsed::Digest {
            name: format!("{domain}/{path}"),
            digest: d.to_string(),
        });
    }
    Ok(Parsed::Tag(TagRef {
        domain: domain.into(),
        path: path.into(),
        tag: tag.unwrap_or("latest").into(),
    }))
}

/// Like distribution/reference's splitDockerDomain: the first component is a registry
/// host only if it looks like one (has a `.` or `:`, or is `localhost`).
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        DEFAULT_DOMAIN.to_string()
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    (domain, path)
}

/// A repository path on a registry (`team/app`): path components, as a reference's,
/// within a name's length.
pub fn is_repository_path(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN && !s.is_empty() && s.split('/').all(is_path_component)
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__" or any number of "-"
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A host name (labels of `[A-Za-z0-9-]`, dot-separated) with an optional `:port`,
/// or a bracketed IPv6 address.
fn is_domain(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once(']') {
            Some((addr, after)) => {
                if addr.is_empty() || !addr.bytes().all(|c| c.is_ascii_hexdigit() || c == b':') {
                    return false;
                }
                (None, after.strip_prefix(':').map(Some).unwrap_or(None))
            }
            None => return false,
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(s), None),
        }
    };
    if let Some(h) = host {
        let labels_ok = !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !labels_ok {
            return false;
        }
    }
    match port {
        Some(p) => !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()),
        None => true,
    }
}

/// `[\w][\w.-]{0,127}`
pub fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

/// `sha256:<64 hex>` or `sha512:<128 hex>`, lowercase: the only digests imagefs
/// turns into file names or blob paths.
pub fn is_digest(s: &str) -> bool {
    match s.split_once(':') {
        Some(("sha256", hex)) => is_hex_digest(hex, 64),
        Some(("sha512", hex)) => is_hex_digest(hex, 128),
        _ => false,
    }
}

fn is_hex_digest(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(s: &str) -> String {
        match parse(s).unwrap() {
            Parsed::Tag(t) => t.to_string(),
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(tag("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(tag("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(tag("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(tag("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(tag("index.docker.io/user/app"), "docker.io/user/app:latest");
        assert_eq!(tag("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            tag("localhost/whoami/web:latest"),
            "localhost/whoami/web:latest"
        );
        assert_eq!(tag("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(tag("quay.io/a/b/c:1.0-rc_1"), "quay.io/a/b/c:1.0-rc_1");
        assert_eq!(tag("[::1]:5000/app:x"), "[::1]:5000/app:x");
    }

    #[test]
    fn components_put_tag_on_the_last() {
        let Parsed::Tag(t) = parse("localhost:5000/mirror/busybox:stable").unwrap() else {
            panic!()
        };
        assert_eq!(
            t.components(),
            ["localhost:5000", "mirror", "busybox:stable"]
        );
        let Parsed::Tag(t) = parse("busybox").unwrap() else {
            panic!()
        };
        assert_eq!(t.components(), ["docker.io", "library", "busybox:latest"]);
        assert_eq!(t.file_name(), "busybox:latest");
    }

    #[test]
    fn digests_and_ids_are_not_tags() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse(&d).unwrap(), Parsed::Id(d.clone()));
        assert_eq!(
            parse(&format!("busybox@{d}")).unwrap(),
            Parsed::Digest {
                name: "docker.io/library/busybox".into(),
                digest: d.clone()
            }
        );
        assert!(parse(&format!("moby-dangling@{d}")).is_ok_and(|p| !matches!(p, Parsed::Tag(_))));
    }

    #[test]
    fn rejects_what_could_escape_or_is_malformed() {
        for bad in [
            "",
            "../etc/passwd:x",
            "a/../b:c",
            "a/./b",
            "/abs:1",
            "UPPER:1",
            "a//b",
            "a:b:c",
            "a:.hidden",
            "a\0b",
            "quay.io/a:",
            "a@sha256:zz",
            "sha256:abc",
            "-lead/x",
            "a/b-:x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse(&format!("a:{}", "t".repeat(129))).is_err());
    }

    #[test]
    fn separators_follow_the_grammar() {
        assert!(is_path_component("a__b"));
        assert!(is_path_component("a---b"));
        assert!(!is_path_component("a___b"));
        assert!(!is_path_component("a.-b"));
        assert!(!is_path_component(".."));
    }
}
