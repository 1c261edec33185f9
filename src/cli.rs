//! The command line: `imagefs [OPTIONS] [SOURCE...] MOUNTPOINT`, with sshfs-style `-o`
//! options, and the sources as labelled store specs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::config_cache::DEFAULT_CACHE_SIZE;
use crate::source::{self, Platform, RegistryOptions, SourceKind};

#[derive(Parser, Debug)]
#[command(
    name = "imagefs",
    version,
    about = "Mount container image stores and archives as by-id/ and by-tag/ trees",
    override_usage = "imagefs [OPTIONS] [SOURCE...] MOUNTPOINT",
    // clap cannot have an optional list before a required positional, so both are one
    // list (the last word is the mount point) and described here
    help_template = "{about}\n\n{usage-heading} {usage}\n\n\
        Arguments:\n  \
        [SOURCE...]  [NAME=][KIND:]PATH: the stores to mount (default: the stores found on this machine)\n  \
        MOUNTPOINT   the directory to mount on (made when missing, and removed again on unmount)\n\n\
        {all-args}{after-help}",
    after_help = sources_help()
)]
pub struct Args {
    /// Stay in the foreground (default: daemonize once the mount is up)
    #[arg(short, long)]
    pub foreground: bool,

    /// Debug logging; implies --foreground
    #[arg(short, long)]
    pub debug: bool,

    /// Mount options: ro, allow_other, default_permissions, cache_size=N[KMG], ...
    #[arg(short = 'o', value_name = "OPT[,OPT...]")]
    pub options: Vec<String>,

    /// [SOURCE...] MOUNTPOINT (see `Args::split`)
    #[arg(hide = true, value_name = "SOURCE")]
    pub args: Vec<String>,
}

impl Args {
    /// The sources and the mount point (the last word).
    pub fn split(&self) -> Result<(&[String], &str), String> {
        match self.args.split_last() {
            Some((mountpoint, sources)) => Ok((sources, mountpoint)),
            None => Err(
                "no MOUNTPOINT given (usage: imagefs [OPTIONS] [SOURCE...] MOUNTPOINT; \
                 see imagefs --help)"
                    .into(),
            ),
        }
    }
}

/// The text after the options: every source kind, from [`source::KINDS`](crate::source::KINDS), so that a
/// new kind is in `--help` as soon as it exists.
fn sources_help() -> String {
    let mut s = String::from(
        "SOURCE is [NAME=][KIND:]PATH; KIND is detected from the content when omitted:\n",
    );
    for kind in crate::source::KINDS {
        s.push_str(&format!(
            "  {:<20}{}\n",
            format!("{}:", kind.prefix),
            kind.about
        ));
    }
    s.push_str(
        "With no SOURCE, the stores found on this machine are mounted. \
         Unmount with umount or fusermount3 -u. See imagefs(1).",
    );
    s
}

/// The `-o` options, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub cache_size: u64,
    pub fsname: Option<String>,
    pub noatime: bool,
    /// Scan every store, even one whose kept catalog is still valid.
    pub rescan: bool,
    /// Neither reuse nor keep catalogs between mounts.
    pub nokeep: bool,
    /// dockerd's socket, `unix:///path` (docker-root sources).
    pub docker_host: Option<String>,
    /// containerd's socket (containerd sources).
    pub containerd_address: Option<String>,
    /// `max_members=`, `max_images=`, `max_index_size=`, `max_config_size=`.
    pub limits: crate::limits::Limits,
    /// `registry_ca=FILE`: a CA a registry's certificate may chain to, beside the
    /// system's.
    pub registry_ca: Vec<PathBuf>,
    /// `registry_insecure`: plain HTTP, and unverified certificates, to any registry.
    pub registry_insecure: bool,
    /// `registry_parallel=N`, `registry_timeout=`, `registry_refresh=`.
    pub registry_parallel: usize,
    pub registry_timeout: Duration,
    pub registry_refresh: Duration,
    /// `platform=OS/ARCH[/VARIANT]`: the entry picked from multi-platform indexes
    /// (None: the host's).
    pub platform: Option<Platform>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            allow_other: false,
            allow_root: false,
            default_permissions: false,
            cache_size: DEFAULT_CACHE_SIZE,
            fsname: None,
            noatime: false,
            rescan: false,
            nokeep: false,
            docker_host: None,
            containerd_address: None,
            limits: crate::limits::Limits::default(),
            registry_ca: Vec::new(),
            registry_insecure: false,
            registry_parallel: RegistryOptions::default().parallel,
            registry_timeout: RegistryOptions::default().timeout,
            registry_refresh: RegistryOptions::default().refresh,
            platform: None,
        }
    }
}

/// Options mount(8) and fstab pass along that mean nothing to imagefs.
const IGNORED: &[&str] = &[
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "defaults",
    "async",
    "sync",
    "atime",
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "x-systemd.automount",
];

pub fn parse_options(opts: &[String]) -> Result<MountOptions, String> {
    let mut out = MountOptions::default();
    for opt in opts.iter().flat_map(|o| o.split(',')).map(str::trim) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("", None) => {}
            ("ro", None) => out.read_only = true,
            ("allow_other", None) => out.allow_other = true,
            ("allow_root", None) => out.allow_root = true,
            ("default_permissions", None) => out.default_permissions = true,
            ("noatime", None) => out.noatime = true,
            ("rescan", None) => out.rescan = true,
            ("nokeep", None) => out.nokeep = true,
            ("cache_size", Some(v)) => out.cache_size = parse_size(v)?,
            ("fsname", Some(v)) => out.fsname = Some(v.to_string()),
            ("docker_host", Some(v)) => out.docker_host = Some(v.to_string()),
            ("containerd_address", Some(v)) => out.containerd_address = Some(v.to_string()),
            ("max_members", Some(v)) => out.limits.max_members = parse_count(key, v)?,
            ("max_images", Some(v)) => out.limits.max_images = parse_count(key, v)?,
            ("max_index_size", Some(v)) => out.limits.max_index_size = parse_size(v)?,
            ("max_config_size", Some(v)) => out.limits.max_config_size = parse_size(v)?,
            ("registry_ca", Some(v)) => out.registry_ca.push(PathBuf::from(v)),
            ("registry_insecure", None) => out.registry_insecure = true,
            ("registry_parallel", Some(v)) => out.registry_parallel = parse_count(key, v)?,
            ("registry_timeout", Some(v)) => out.registry_timeout = parse_duration(key, v)?,
            ("registry_refresh", Some(v)) => out.registry_refresh = parse_duration(key, v)?,
            ("platform", Some(v)) => {
                out.platform = Some(Platform::parse(v).map_err(|e| format!("platform={e}"))?)
            }
            ("subtype", Some(_)) => {}
            (k, None) if IGNORED.contains(&k) => {}
            (k, _) if k.starts_with("x-") || k.starts_with("comment=") => {}
            _ => return Err(format!("unknown mount option {opt:?} (see imagefs(1))")),
        }
    }
    Ok(out)
}

/// A positive count, for a limit.
fn parse_count(key: &str, v: &str) -> Result<usize, String> {
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("bad {key}={v:?}: use a positive whole number"))
}

/// `30s`, `500ms`, `2m`, `1h`; a bare number is seconds. Never zero.
pub fn parse_duration(key: &str, v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad {key}={v:?}: use a duration such as 30s, 500ms or 2m"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "bad {key}={v:?}: use a duration such as 30s, 500ms or 2m"
            ));
        }
    };
    if d.is_zero() {
        return Err(format!("bad {key}={v:?}: must be more than zero"));
    }
    Ok(d)
}

/// `64M`, `1G`, `4096`, `512k`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => return Err(format!("bad size {s:?}: use a number with K, M or G")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?}: use a number with K, M or G"))
}

/// One SOURCE argument: its label and the spec handed to `source::open`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    pub label: String,
    pub spec: String,
}

fn valid_label(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// Splits `NAME=SOURCE`, derives missing labels from file names, and makes them unique.
pub fn parse_sources(args: &[String]) -> Result<Vec<SourceSpec>, String> {
    let mut out: Vec<SourceSpec> = Vec::new();
    for arg in args {
        // A path that exists as written is a path, even with '=' in it.
        let (label, spec) = match arg.split_once('=') {
            Some((name, rest))
                if !Path::new(arg).exists() && !name.contains(':') && !name.contains('/') =>
            {
                if !valid_label(name) {
                    return Err(format!("{arg:?}: {name:?} is not a usable label"));
                }
                (Some(name.to_string()), rest.to_string())
            }
            _ => (None, arg.clone()),
        };
        let label = label.unwrap_or_else(|| {
            let (_, path) = source::split_prefix(&spec);
            let name = Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "store".into());
            source::label_from_file_name(&name)
        });
        let label = if valid_label(&label) {
            label
        } else {
            "store".into()
        };
        out.push(SourceSpec {
            label: unique_label(&label, |l| out.iter().any(|s| s.label == l)),
            spec,
        });
    }
    Ok(out)
}

/// `label`, or `label-2`, `label-3`, … : the first that is not `taken`, so that two
/// stores never share a directory.
pub fn unique_label(label: &str, taken: impl Fn(&str) -> bool) -> String {
    let mut unique = label.to_string();
    let mut n = 2;
    while taken(&unique) {
        unique = format!("{label}-{n}");
        n += 1;
    }
    unique
}

/// Where imagefs keeps catalogs and indexes: `$XDG_CACHE_HOME/imagefs`, else
/// `~/.cache/imagefs` (read here, so that nothing below the command line reads the
/// environment).
pub fn kept_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("imagefs"))
}

/// Where registry credentials are looked for, in podman's order, then Docker's:
/// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `~/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json` (else
/// `~/.docker/config.json`).
pub fn registry_auth_files() -> Vec<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = var("HOME");
    let mut files = Vec::new();
    files.extend(var("REGISTRY_AUTH_FILE"));
    files.extend(var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    files.extend(
        home.as_ref()
            .map(|h| h.join(".config/containers/auth.json")),
    );
    match var("DOCKER_CONFIG") {
        Some(d) => files.push(d.join("config.json")),
        None => files.extend(home.as_ref().map(|h| h.join(".docker/config.json"))),
    }
    files
}

/// The proxies of `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` (or their lower-case
/// forms, which curl and Go read too).
pub fn registry_proxies() -> source::RegistryProxies {
    let var = |k: &str| {
        [k.to_string(), k.to_ascii_lowercase()]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    };
    source::RegistryProxies {
        https: var("HTTPS_PROXY"),
        http: var("HTTP_PROXY"),
        no_proxy: source::RegistryProxies::split_no_proxy(&var("NO_PROXY").unwrap_or_default()),
    }
}

/// The system's CA bundle: `$SSL_CERT_FILE`, else the first of the usual places.
pub fn system_ca_file() -> Option<PathBuf> {
    if let Some(f) = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(f));
    }
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// dockerd's socket when `-o docker_host=` does not say: `DOCKER_HOST`, as the docker
/// command reads it.
pub fn docker_host_from_env() -> Option<String> {
    std::env::var("DOCKER_HOST").ok().filter(|v| !v.is_empty())
}

/// Where stores live on a machine, for the no-source default.
pub fn default_store_locations() -> Vec<(SourceKind, PathBuf)> {
    let mut v = vec![(
        &crate::source::containers_storage::KIND,
        PathBuf::from("/var/lib/containers/storage"),
    )];
    if let Some(home) = std::env::var_os("HOME") {
        v.push((
            &crate::source::containers_storage::KIND,
            Path::new(&home).join(".local/share/containers/storage"),
        ));
    }
    v.push((
        &crate::source::docker_root::KIND,
        PathBuf::from("/var/lib/docker"),
    ));
    v.push((
        &crate::source::containerd::KIND,
        PathBuf::from("/var/lib/containerd"),
    ));
    v.push((
        &crate::source::containerd::KIND,
        PathBuf::from("/var/lib/rancher/k3s/agent/containerd"),
    ));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn help_names_every_source_kind_and_the_usage_line() {
        use clap::CommandFactory;
        let help = Args::command().render_help().to_string();
        assert!(
            help.contains("Usage: imagefs [OPTIONS] [SOURCE...] MOUNTPOINT"),
            "{help}"
        );
        for kind in crate::source::KINDS {
            assert!(
                help.contains(&format!("  {kind}: ")),
                "{kind} missing:\n{help}"
            );
        }
    }

    #[test]
    fn the_man_page_names_every_source_kind_and_the_usage() {
        let man = include_str!("../man/imagefs.1");
        for kind in crate::source::KINDS {
            let roff = format!(".B {}:\n", kind.prefix.replace('-', "\\-"));
            assert!(man.contains(&roff), "man/imagefs.1 lacks {roff:?}");
        }
        assert!(man.contains("[\\fISOURCE\\fR...] \\fIMOUNTPOINT\\fR"));
    }

    #[test]
    fn the_last_word_is_the_mount_point() {
        let a = Args::try_parse_from(["imagefs", "-o", "ro", "a.tar", "b.tar", "/mnt"]).unwrap();
        let (sources, mp) = a.split().unwrap();
        assert_eq!((sources, mp), (&s(&["a.tar", "b.tar"])[..], "/mnt"));
        let a = Args::try_parse_from(["imagefs", "/mnt"]).unwrap();
        assert_eq!(a.split().unwrap(), (&[][..], "/mnt"));
        let a = Args::try_parse_from(["imagefs", "-f"]).unwrap();
        assert!(a.split().unwrap_err().contains("no MOUNTPOINT"));
    }

    #[test]
    fn options_parse_like_sshfs() {
        let o = parse_options(&s(&[
            "ro,allow_other",
            "cache_size=64M,default_permissions,nodev",
        ]))
        .unwrap();
        assert!(o.read_only && o.allow_other && o.default_permissions);
        assert_eq!(o.cache_size, 64 << 20);
        assert!(parse_options(&s(&["bogus"])).is_err());
        assert!(parse_options(&s(&["cache_size=12Q"])).is_err());
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        let o = parse_options(&s(&["max_members=9,max_images=7,max_config_size=2G"])).unwrap();
        assert_eq!(
            (
                o.limits.max_members,
                o.limits.max_images,
                o.limits.max_config_size
            ),
            (9, 7, 2 << 30)
        );
        assert!(parse_options(&s(&["max_images=0"])).is_err());
        assert!(parse_options(&s(&["max_images=lots"])).is_err());
    }

    #[test]
    fn sources_get_labels() {
        let v = parse_sources(&s(&[
            "cache=docker-archive:/x/a.tar",
            "/y/runtime.tar.gz",
            "oci:/z/runtime",
            "/nonexistent/a=b/c.tar",
        ]))
        .unwrap();
        assert_eq!(
            v[0],
            SourceSpec {
                label: "cache".into(),
                spec: "docker-archive:/x/a.tar".into()
            }
        );
        assert_eq!(v[1].label, "runtime");
        assert_eq!(v[2].label, "runtime-2");
        assert_eq!(v[2].spec, "oci:/z/runtime");
        assert_eq!(v[3].spec, "/nonexistent/a=b/c.tar");
        assert!(parse_sources(&s(&["..=/a.tar"])).is_err());
    }
}
