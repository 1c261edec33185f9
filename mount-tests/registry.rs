//! `registry:` against a docker-registry (distribution 2.8) of the test's own on
//! loopback, filled with `skopeo copy` from the fixtures. `skopeo list-tags` and
//! `skopeo inspect` are the truth, also after each write through the mount.

use crate::common::*;

/// What skopeo says the registry holds for `repo`: (HOST/REPO:TAG → config ID).
fn truth(r: &RegistryD, repo: &str) -> BTreeMap<String, String> {
    r.tags(repo)
        .into_iter()
        .map(|t| {
            let (_, id) = r.inspect(&format!("{repo}:{t}"));
            (format!("{}/{repo}:{t}", r.addr()), id)
        })
        .collect()
}

fn fill(r: &RegistryD, f: &Fixtures) {
    let sample = f.path("sample.tar");
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/web:latest"),
        "whoami/web:latest",
    );
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/web:latest"),
        "whoami/web:v2",
    );
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/api:1.0"),
        "whoami/api:1.0",
    );
    r.push(
        &format!("oci:{}:localhost/whoami/multi:latest", f.path("multi")),
        "whoami/multi:latest",
    );
}

#[test]
fn a_registry_reads_like_skopeo_and_its_writes_read_back() {
    let f = fixtures();
    let r = RegistryD::start("");
    fill(&r, f);
    let m = Mount::new(&["-o", "nokeep", &format!("reg=registry:{}", r.addr())]);
    // one store: every repository of the catalog, each under by-tag/HOST/
    let repos = lines(&ok(&format!(
        "ls {}",
        m.p(&format!("by-tag/{}/whoami", r.addr()))
    )));
    assert_eq!(
        repos,
        lines("api:1.0\nmulti:latest\nweb:latest\nweb:v2\n"),
        "{}",
        m.log()
    );
    let mut want = BTreeMap::new();
    for repo in ["whoami/web", "whoami/api", "whoami/multi"] {
        want.extend(truth(&r, repo));
    }
    assert_eq!(tags_of(&m, ""), want, "{}", m.log());
    // every config hashes to its name
    let sums = ok(&format!("cd {} && sha256sum *", m.p("by-id")));
    assert_eq!(sums.lines().count(), 3);
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(format!("sha256:{sum}"), name);
    }
    // the manifest digest a pull names, and the other platforms of the index
    let web = format!("by-tag/{}/whoami/web:latest", r.addr());
    let (digest, _) = r.inspect("whoami/web:latest");
    let attr =
        |path: &str, name: &str| ok(&format!("getfattr --only-values -n {name} {}", m.p(path)));
    assert_eq!(attr(&web, "user.image.digest"), digest);
    let multi = format!("by-tag/{}/whoami/multi:latest", r.addr());
    assert!(
        attr(&multi, "user.image.platforms").contains("arm64"),
        "{}",
        attr(&multi, "user.image.platforms")
    );

    // the whole registry, as skopeo sees it, after each write
    let all = |r: &RegistryD| {
        let mut want = BTreeMap::new();
        for repo in ["whoami/web", "whoami/api", "whoami/multi", "team/copy"] {
            want.extend(truth(r, repo));
        }
        want
    };
    let whoami = m.p(&format!("by-tag/{}/whoami", r.addr()));
    let web_id = r.inspect("whoami/web:latest").1;
    let web_file = m.p(&format!("by-id/{web_id}"));

    // ln: the same manifest under a new tag
    ok(&format!("ln {web_file} {whoami}/web:v3"));
    assert_eq!(r.inspect("whoami/web:v3"), r.inspect("whoami/web:latest"));
    assert_eq!(r.tags("whoami/web"), ["latest", "v2", "v3"]);
    assert_eq!(tags_of(&m, ""), all(&r));
    // ln into another repository, a new one: its blobs are mounted from the first
    // (no byte moves), then the manifest is put; the index's too
    let team = m.p(&format!("by-tag/{}/team", r.addr()));
    ok(&format!("mkdir -p {team}"));
    ok(&format!("ln {web_file} {team}/copy:1"));
    let multi_id = r.inspect("whoami/multi:latest").1;
    ok(&format!(
        "ln {} {team}/copy:multi",
        m.p(&format!("by-id/{multi_id}"))
    ));
    assert_eq!(r.tags("team/copy"), ["1", "multi"]);
    assert_eq!(r.inspect("team/copy:1"), r.inspect("whoami/web:latest"));
    assert_eq!(
        r.inspect("team/copy:multi"),
        r.inspect("whoami/multi:latest")
    );
    assert!(
        r.log().contains("POST /v2/team/copy/blobs/uploads/?mount="),
        "blobs mounted, not uploaded"
    );
    assert!(
        !r.log().contains("PATCH /v2/team/copy/blobs/uploads"),
        "no blob uploaded"
    );
    assert_eq!(tags_of(&m, ""), all(&r));

    // rm of a tag whose manifest other tags name: distribution deletes by digest only,
    // which would take them all
    let o = sh(&format!("rm {whoami}/web:v3"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("busy"), "{o:?}");
    assert_eq!(r.tags("whoami/web"), ["latest", "v2", "v3"]);
    // rm by-id: a registry has no untagged images
    let o = sh(&format!("rm {web_file}"));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not permitted"),
        "{o:?}"
    );
    assert!(
        m.log().contains("a registry has no untagged images"),
        "{}",
        m.log()
    );

    // mv of a lone tag: the new name holds the same manifest, the old is gone
    let (before, id) = r.inspect("whoami/multi:latest");
    ok(&format!("mv {whoami}/multi:latest {whoami}/multi:stable"));
    assert_eq!(r.tags("whoami/multi"), ["stable"]);
    assert_eq!(
        r.inspect("whoami/multi:stable"),
        (before.clone(), id.clone())
    );
    // mv into another repository: put there, then taken off here
    ok(&format!("mv {whoami}/multi:stable {team}/copy:moved"));
    assert!(r.tags("whoami/multi").is_empty());
    assert_eq!(r.inspect("team/copy:moved"), (before, id));
    assert_eq!(tags_of(&m, ""), all(&r));
    // rm of a lone tag deletes it
    ok(&format!("rm {whoami}/api:1.0"));
    assert!(r.tags("whoami/api").is_empty());
    assert_eq!(tags_of(&m, ""), all(&r));
    drop(m);

    // several repositories as several sources: each its own store
    let m = Mount::new(&[
        "-o",
        "nokeep",
        &format!("web=registry:{}/whoami/web", r.addr()),
        &format!("copy=registry:{}/team/copy", r.addr()),
    ]);
    assert_eq!(tags_of(&m, "web/"), truth(&r, "whoami/web"), "{}", m.log());
    assert_eq!(tags_of(&m, "copy/"), truth(&r, "team/copy"));
}

#[test]
fn a_registry_of_1200_tags_is_paged_changes_show_and_an_outage_is_survived() {
    let f = fixtures();
    let mut r = RegistryD::start("");
    let sample = f.path("sample.tar");
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/web:latest"),
        "big/app:t0",
    );
    // 1,199 more tags of the same manifest, PUT by one keep-alive client
    ok(&format!(
        r#"python3 - <<'PY'
import http.client, json
c = http.client.HTTPConnection("{addr}")
accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
c.request("GET", "/v2/big/app/manifests/t0", headers={{"Accept": accept}})
r = c.getresponse(); body = r.read(); ctype = r.getheader("Content-Type")
for i in range(1, 1200):
    c.request("PUT", f"/v2/big/app/manifests/t{{i}}", body=body, headers={{"Content-Type": ctype}})
    r = c.getresponse(); r.read()
    assert r.status == 201, r.status
PY"#,
        addr = r.addr()
    ));
    let m = Mount::new(&[
        "-o",
        "nokeep,registry_refresh=1s,registry_timeout=2s",
        &format!("registry:{}/big/app", r.addr()),
    ]);
    let mounted = Instant::now();
    let dir = m.p(&format!("by-tag/{}/big", r.addr()));
    let count = || {
        ok(&format!("ls {dir} | wc -l"))
            .trim()
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!(count(), 1200, "two pages of the tags list: {}", m.log());
    assert_eq!(r.tags("big/app").len(), 1200);
    let links = ok(&format!("stat -c %h {dir}/app:t0"));
    assert_eq!(links.trim(), "1201", "by-id and 1,200 tags are one file");

    // another program adds a tag: it shows within the poll interval
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/api:1.0"),
        "big/app:new",
    );
    wait_for("the new tag", || count() == 1201);

    // the registry goes away: the tree stays, configs read are served, the mount lives
    r.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(), 1201, "{}", m.log());
    ok(&format!("cat {dir}/app:new > /dev/null"));
    // and comes back: changes show again
    r.spawn();
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/api:1.0"),
        "big/app:after",
    );
    wait_for("the tag pushed after the outage", || count() == 1202);
    // polled, and never more often than registry_refresh: each poll and each scan
    // asks for the tags list's first page once
    let first_pages = r
        .log()
        .lines()
        .filter(|l| l.contains("GET /v2/big/app/tags/list?n="))
        .count();
    let most = mounted.elapsed().as_secs() as usize + 4;
    assert!(
        (3..=most).contains(&first_pages),
        "{first_pages} tags lists in {:?}",
        mounted.elapsed()
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it, in `dir` (ca.crt, server.crt,
/// server.key), and `dir/ca/ca.crt` for skopeo's --cert-dir.
fn make_ca(dir: &Path) {
    ok(&format!(
        r#"cd '{d}' && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=imagefs-test-ca 2>/dev/null &&
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null &&
        printf 'subjectAltName=IP:127.0.0.1,DNS:registry.imagefs.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext &&
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext 2>/dev/null &&
        mkdir ca && cp ca.crt ca/"#,
        d = dir.display()
    ));
}

/// Runs imagefs to its exit (it must fail), with HOME empty so that no credential of
/// the machine's is found; its stderr.
fn refused_mount(env: &str, args: &str) -> String {
    let home = tempfile::tempdir().unwrap();
    let mp = home.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let o = sh(&format!(
        "env -i PATH=\"$PATH\" HOME='{h}' {env} timeout 60 {BIN} -o nokeep {args} '{mp}'",
        h = home.path().display(),
        mp = mp.display()
    ));
    if is_mounted(&mp) {
        let _ = sh(&format!("umount '{}'", mp.display()));
    }
    assert!(!o.status.success(), "mounted: {o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_registry_over_tls_with_basic_auth_is_read_with_the_users_credentials() {
    let f = fixtures();
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path().display().to_string();
    make_ca(certs.path());
    let password = "s3cret-pw-Zq9";
    ok(&format!(
        "htpasswd -Bbn imagefs '{password}' > '{c}/htpasswd'"
    ));
    let mut r = RegistryD::start(&format!(
        "  tls:\n    certificate: {c}/server.crt\n    key: {c}/server.key\nauth:\n  htpasswd:\n    realm: imagefs-test\n    path: {c}/htpasswd\n"
    ));
    r.skopeo_dest = format!("--dest-cert-dir {c}/ca --dest-creds imagefs:{password}");
    r.skopeo_src = format!("--src-cert-dir {c}/ca --src-creds imagefs:{password}");
    let sample = f.path("sample.tar");
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/web:latest"),
        "whoami/web:latest",
    );
    let spec = format!("registry:{}/whoami/web", r.addr());
    let auth = certs.path().join("auth.json");
    std::fs::write(
        &auth,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
            r.addr(),
            ok(&format!("printf %s 'imagefs:{password}' | base64 -w0"))
        ),
    )
    .unwrap();

    // no credentials: refused, and said so
    let said = refused_mount("", &format!("-o registry_ca={c}/ca.crt {spec}"));
    assert!(said.contains(": 401"), "{said}");
    // credentials, but a CA the machine does not trust: the certificate is refused
    let said = refused_mount(&format!("REGISTRY_AUTH_FILE='{}'", auth.display()), &spec);
    assert!(
        said.to_lowercase().contains("certificate") || said.contains("UnknownIssuer"),
        "{said}"
    );

    // both: the tags as skopeo lists them, the store the mounting user's alone, and
    // the password in no log line, at every level
    let auth_env = auth.display().to_string();
    let m = Mount::with_env(
        &["-o", &format!("nokeep,registry_ca={c}/ca.crt"), &spec],
        &[("REGISTRY_AUTH_FILE", &auth_env), ("RUST_LOG", "trace")],
    );
    assert_eq!(tags_of(&m, ""), truth(&r, "whoami/web"));
    let id = tags_of(&m, "").values().next().unwrap().clone();
    assert_eq!(
        ok(&format!("stat -c %a {}", m.p(&format!("by-id/{id}")))).trim(),
        "600"
    );
    let dir = m.p(&format!("by-tag/{}/whoami", r.addr()));
    ok(&format!("ln {} {dir}/web:v2", m.p(&format!("by-id/{id}"))));
    assert_eq!(r.tags("whoami/web"), ["latest", "v2"]);
    let log = m.log();
    let b64 = ok(&format!("printf %s 'imagefs:{password}' | base64 -w0"));
    assert!(
        log.contains("Authorization") || log.len() > 1000,
        "trace logs were written"
    );
    assert!(
        !log.contains(password) && !log.contains(b64.trim()),
        "a credential in the log"
    );
    drop(m);

    // the password in Docker's pass credential helper, named by config.json's
    // credHelpers for this registry; its auths entry (a wrong password) is not used
    let home = tempfile::tempdir().unwrap();
    let h = home.path().display().to_string();
    let keyring = PassStore::new(home.path());
    keyring.store(&r.addr(), "imagefs", password);
    std::fs::create_dir(home.path().join(".docker")).unwrap();
    std::fs::write(
        home.path().join(".docker/config.json"),
        format!(
            r#"{{"auths": {{"{a}": {{"auth": "{}"}}}}, "credHelpers": {{"{a}": "pass"}}}}"#,
            ok("printf %s 'imagefs:wrong' | base64 -w0").trim(),
            a = r.addr()
        ),
    )
    .unwrap();
    let m = Mount::with_env(
        &["-o", &format!("nokeep,registry_ca={c}/ca.crt"), &spec],
        &[
            ("HOME", &h),
            ("GNUPGHOME", &keyring.gnupg),
            ("RUST_LOG", "imagefs=debug"),
        ],
    );
    assert_eq!(tags_of(&m, ""), truth(&r, "whoami/web"), "{}", m.log());
    assert!(
        m.log().contains("credentials from docker-credential-pass"),
        "{}",
        m.log()
    );
    assert!(!m.log().contains(password), "a credential in the log");
    drop(m);
    r.stop();
}

/// A password store of Docker's `pass` credential helper in `home`: a gpg key made
/// for it, and `pass init`; its gpg-agent stopped on drop.
struct PassStore {
    home: PathBuf,
    gnupg: String,
}

impl PassStore {
    fn new(home: &Path) -> PassStore {
        let gnupg = home.join("g");
        let s = PassStore {
            home: home.to_path_buf(),
            gnupg: gnupg.display().to_string(),
        };
        std::fs::create_dir(&gnupg).unwrap();
        ok(&format!(
            "chmod 700 '{g}' && {env} gpg --batch --quiet --passphrase '' --quick-gen-key imagefs-test@example default default never 2>/dev/null && {env} pass init imagefs-test@example >/dev/null",
            g = s.gnupg,
            env = s.env()
        ));
        s
    }

    fn env(&self) -> String {
        format!("HOME='{}' GNUPGHOME='{}'", self.home.display(), self.gnupg)
    }

    fn store(&self, server: &str, user: &str, secret: &str) {
        ok(&format!(
            r#"printf '{{"ServerURL":"{server}","Username":"{user}","Secret":"{secret}"}}' | {} docker-credential-pass store"#,
            self.env()
        ));
    }
}

impl Drop for PassStore {
    fn drop(&mut self) {
        let _ = sh(&format!("{} gpgconf --kill gpg-agent", self.env()));
    }
}

/// A registry's name that is not this machine's: only the test's forward proxy
/// resolves it (to 127.0.0.1).
const FAR: &str = "registry.imagefs.test";

/// `truth` under the name `host` in place of the registry's address.
fn truth_as(r: &RegistryD, repo: &str, host: &str) -> BTreeMap<String, String> {
    truth(r, repo)
        .into_iter()
        .map(|(k, v)| (k.replacen(&r.addr(), host, 1), v))
        .collect()
}

/// Proxies as podman and skopeo take them: HTTPS_PROXY for https, HTTP_PROXY for
/// plain http, NO_PROXY bypassing them, and this machine never proxied. Through a
/// proxy, a registry is not loopback: plain HTTP needs registry_insecure, and even
/// then no credential is sent over it.
#[test]
fn a_registry_behind_a_proxy_is_reached_through_it_and_this_machine_never_is() {
    let f = fixtures();
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path().display().to_string();
    make_ca(certs.path());
    let mut tls = RegistryD::start(&format!(
        "  tls:\n    certificate: {c}/server.crt\n    key: {c}/server.key\n"
    ));
    tls.skopeo_dest = format!("--dest-cert-dir {c}/ca");
    tls.skopeo_src = format!("--src-cert-dir {c}/ca");
    let password = "plain-pw-Vb3";
    ok(&format!(
        "htpasswd -Bbn imagefs '{password}' > '{c}/htpasswd'"
    ));
    let mut plain = RegistryD::start(&format!(
        "auth:\n  htpasswd:\n    realm: imagefs-test\n    path: {c}/htpasswd\n"
    ));
    plain.skopeo_dest = format!("--dest-tls-verify=false --dest-creds imagefs:{password}");
    plain.skopeo_src = format!("--src-tls-verify=false --src-creds imagefs:{password}");
    let sample = f.path("sample.tar");
    for r in [&tls, &plain] {
        r.push(
            &format!("docker-archive:{sample}:localhost/whoami/web:latest"),
            "whoami/web:latest",
        );
    }
    let port = free_port();
    let log = certs.path().join("proxy.log");
    let map = format!("{FAR}=127.0.0.1");
    let p = port.to_string();
    let _proxy = Helper::start(
        "forward-proxy.py",
        port,
        &[p.as_ref(), map.as_ref(), log.as_ref()],
    );
    let proxy = format!("http://127.0.0.1:{port}");
    let proxied = || std::fs::read_to_string(&log).unwrap_or_default();
    let ca = format!("nokeep,registry_ca={c}/ca.crt");

    // by a name only the proxy knows, through HTTPS_PROXY
    let far = format!("{FAR}:{}", tls.port);
    let spec = format!("registry:{far}/whoami/web");
    let m = Mount::with_env(&["-o", &ca, &spec], &[("HTTPS_PROXY", &proxy)]);
    assert_eq!(
        tags_of(&m, ""),
        truth_as(&tls, "whoami/web", &far),
        "{}",
        m.log()
    );
    assert!(
        proxied().contains(&format!("CONNECT {far} ")),
        "{}",
        proxied()
    );
    drop(m);

    // NO_PROXY names its domain: asked directly, where the name does not resolve
    let said = refused_mount(
        &format!("HTTPS_PROXY={proxy} NO_PROXY=localhost,.imagefs.test"),
        &format!("-o registry_ca={c}/ca.crt {spec}"),
    );
    assert!(said.contains(FAR), "{said}");
    assert!(
        !proxied()
            .lines()
            .any(|l| l.contains("imagefs.test") && !l.starts_with("CONNECT")),
        "{}",
        proxied()
    );
    let before = proxied().lines().count();

    // this machine goes direct, whatever the variables say
    let m = Mount::with_env(
        &["-o", &ca, &format!("registry:{}/whoami/web", tls.addr())],
        &[("HTTPS_PROXY", &proxy), ("HTTP_PROXY", &proxy)],
    );
    assert_eq!(tags_of(&m, ""), truth(&tls, "whoami/web"));
    drop(m);
    assert_eq!(proxied().lines().count(), before, "{}", proxied());

    // plain HTTP by a name that is not loopback: refused without registry_insecure;
    // with it, through the proxy (ureq tunnels http too), but the password is not
    // sent over plain HTTP, so the registry refuses; the same file's password for
    // it as this machine is sent, and read with
    let far_plain = format!("{FAR}:{}", plain.port);
    let auth = certs.path().join("auth.json");
    let b64 = ok(&format!("printf %s 'imagefs:{password}' | base64 -w0"));
    std::fs::write(
        &auth,
        format!(
            r#"{{"auths": {{"{far_plain}": {{"auth": "{b}"}}, "{}": {{"auth": "{b}"}}}}}}"#,
            plain.addr(),
            b = b64.trim()
        ),
    )
    .unwrap();
    let env = format!(
        "HTTPS_PROXY={proxy} HTTP_PROXY={proxy} REGISTRY_AUTH_FILE='{}'",
        auth.display()
    );
    let tunnels = || {
        proxied()
            .lines()
            .filter(|l| l.starts_with(&format!("CONNECT {far_plain} ")))
            .count()
    };
    let plain_spec = format!("registry:{far_plain}/whoami/web");
    let said = refused_mount(&env, &plain_spec);
    assert!(
        // ": 401" (the status), not "401" (which a random port may hold)
        !said.contains(": 401") && said.contains("answers without TLS"),
        "plain HTTP without registry_insecure: {said}"
    );
    let before = tunnels();
    let said = refused_mount(&env, &format!("-o registry_insecure {plain_spec}"));
    assert!(said.contains(": 401"), "{said}");
    assert!(tunnels() > before, "{}", proxied());
    let auth_env = auth.display().to_string();
    let m = Mount::with_env(
        &[
            "-o",
            "nokeep",
            &format!("registry:{}/whoami/web", plain.addr()),
        ],
        &[("REGISTRY_AUTH_FILE", &auth_env), ("HTTP_PROXY", &proxy)],
    );
    assert_eq!(tags_of(&m, ""), truth(&plain, "whoami/web"));
    drop(m);
    tls.stop();
    plain.stop();
}

/// The identity token the test's token server takes (what `docker login` keeps as
/// `identitytoken` for registries that issue OAuth2 refresh tokens).
const REFRESH: &str = "refresh-Jq4-identity";

/// The test's token server (mount-tests/token-server.py).
struct TokenServer {
    server: Helper,
    log: PathBuf,
}

impl TokenServer {
    /// On `port`, or a free one.
    /// Grants what Basic auth with `creds` or the identity token [`REFRESH`] asks.
    fn start(dir: &Path, creds: &str, refuse: bool, port: Option<u16>) -> TokenServer {
        let port = port.unwrap_or_else(free_port);
        let log = dir.join("tokens.log");
        let (key, crt, p) = (
            dir.join("token.key"),
            dir.join("token.crt"),
            port.to_string(),
        );
        let mut args: Vec<&std::ffi::OsStr> = vec![
            p.as_ref(),
            key.as_ref(),
            crt.as_ref(),
            "imagefs-test-issuer".as_ref(),
            "imagefs-test".as_ref(),
            creds.as_ref(),
            log.as_ref(),
        ];
        if refuse {
            args.push("--refuse".as_ref());
        }
        args.extend::<[&std::ffi::OsStr; 2]>(["--refresh".as_ref(), REFRESH.as_ref()]);
        TokenServer {
            server: Helper::start("token-server.py", port, &args),
            log,
        }
    }

    fn port(&self) -> u16 {
        self.server.port
    }

    /// The token requests made so far, one line each.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

#[test]
fn a_registry_behind_bearer_tokens_is_read_and_written_with_few_tokens() {
    let f = fixtures();
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path().display().to_string();
    ok(&format!(
        "cd '{c}' && openssl req -x509 -newkey rsa:2048 -nodes -keyout token.key -out token.crt -days 2 -subj /CN=imagefs-token 2>/dev/null"
    ));
    let creds = "imagefs:t0ken-pw-Kx7";
    let tokens = TokenServer::start(certs.path(), creds, false, None);
    let mut r = RegistryD::start(&format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: imagefs-test\n    issuer: imagefs-test-issuer\n    rootcertbundle: {c}/token.crt\n",
        tokens.port()
    ));
    r.skopeo_dest = format!("--dest-tls-verify=false --dest-creds {creds}");
    r.skopeo_src = format!("--src-tls-verify=false --src-creds {creds}");
    let sample = f.path("sample.tar");
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/web:latest"),
        "whoami/web:latest",
    );
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/api:1.0"),
        "whoami/web:api",
    );
    let auth = certs.path().join("auth.json");
    std::fs::write(
        &auth,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
            r.addr(),
            ok(&format!("printf %s '{creds}' | base64 -w0")).trim()
        ),
    )
    .unwrap();
    let spec = format!("registry:{}/whoami/web", r.addr());
    let before = tokens.requests().len();
    let auth_env = auth.display().to_string();
    let m = Mount::with_env(
        &["-o", "nokeep", &spec],
        &[("REGISTRY_AUTH_FILE", &auth_env)],
    );
    assert_eq!(tags_of(&m, ""), truth(&r, "whoami/web"));
    let id = r.inspect("whoami/web:api").1;
    let dir = m.p(&format!("by-tag/{}/whoami", r.addr()));
    ok(&format!("mv {dir}/web:api {dir}/web:v2"));
    assert_eq!(r.tags("whoami/web"), ["latest", "v2"]);
    ok(&format!("ln {} {dir}/web:v3", m.p(&format!("by-id/{id}"))));
    assert_eq!(r.tags("whoami/web"), ["latest", "v2", "v3"]);
    assert_eq!(r.inspect("whoami/web:v3").1, id);
    // one token per scope, reused until it expires: the scan and the writes made
    // dozens of requests
    let mine: Vec<String> = tokens.requests()[before..]
        .iter()
        .filter(|l| l.contains("agent=imagefs/"))
        .cloned()
        .collect();
    assert!(
        (3..=4).contains(&mine.len()),
        "token requests: {mine:?}\n{}",
        m.log()
    );
    // the scope the registry's challenge asks for (distribution lists the two
    // actions in either order)
    assert!(
        mine.iter().any(|l| {
            l.contains("repository:whoami/web:pull,push")
                || l.contains("repository:whoami/web:push,pull")
        }),
        "{mine:?}"
    );
    drop(m);

    // an identity token in place of a password: exchanged by the OAuth2 POST form,
    // and it grants writes as the password did
    let identity = certs.path().join("identity.json");
    std::fs::write(
        &identity,
        format!(
            r#"{{"auths": {{"{}": {{"identitytoken": "{REFRESH}"}}}}}}"#,
            r.addr()
        ),
    )
    .unwrap();
    let before = tokens.requests().len();
    let identity_env = identity.display().to_string();
    let m = Mount::with_env(
        &["-o", "nokeep", &spec],
        &[("REGISTRY_AUTH_FILE", &identity_env)],
    );
    assert_eq!(tags_of(&m, ""), truth(&r, "whoami/web"));
    ok(&format!(
        "ln {} {dir2}/web:v4",
        m.p(&format!("by-id/{id}")),
        dir2 = m.p(&format!("by-tag/{}/whoami", r.addr()))
    ));
    assert_eq!(r.tags("whoami/web"), ["latest", "v2", "v3", "v4"]);
    let mine: Vec<String> = tokens.requests()[before..]
        .iter()
        .filter(|l| l.contains("agent=imagefs/"))
        .cloned()
        .collect();
    assert!(
        !mine.is_empty() && mine.iter().all(|l| l.contains("user=refresh granted=True")),
        "token requests: {mine:?}\n{}",
        m.log()
    );
    assert!(!m.log().contains(REFRESH), "the identity token in the log");
    drop(m);

    // a whole registry whose catalog is refused (the token server grants no
    // registry:catalog scope): the mount says so, and what to name instead
    let said = refused_mount(
        &format!("REGISTRY_AUTH_FILE='{}'", auth.display()),
        &format!("registry:{}", r.addr()),
    );
    assert!(said.contains("catalog API is refused"), "{said}");
    assert!(
        said.contains(&format!("registry:{}/REPO", r.addr())),
        "{said}"
    );

    // a token endpoint that refuses: the mount says so
    let port = tokens.port();
    drop(tokens);
    let _refusing = TokenServer::start(certs.path(), creds, true, Some(port));
    let said = refused_mount(&format!("REGISTRY_AUTH_FILE='{}'", auth.display()), &spec);
    assert!(said.contains("refused a token"), "{said}");
    r.stop();
}

/// mount-tests/fault-proxy.py in front of a registry.
struct FaultProxy {
    server: Helper,
    rules: PathBuf,
    log: PathBuf,
}

impl FaultProxy {
    fn start(dir: &Path, upstream: &str) -> FaultProxy {
        let port = free_port();
        let (rules, log) = (dir.join("rules.json"), dir.join("proxy.log"));
        std::fs::write(&rules, "[]").unwrap();
        let p = port.to_string();
        let server = Helper::start(
            "fault-proxy.py",
            port,
            &[p.as_ref(), upstream.as_ref(), rules.as_ref(), log.as_ref()],
        );
        FaultProxy { server, rules, log }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    fn set(&self, rules: serde_json::Value) {
        std::fs::write(&self.rules, rules.to_string()).unwrap();
    }

    /// (time, method, path, status) of every request so far.
    fn requests(&self) -> Vec<(f64, String, String, u16)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split(' ');
                Some((
                    w.next()?.parse().ok()?,
                    w.next()?.to_string(),
                    w.next()?.to_string(),
                    w.next()?.parse().ok()?,
                ))
            })
            .collect()
    }
}

#[test]
fn registry_faults_are_waited_out_or_reported_and_the_rest_is_shown() {
    let f = fixtures();
    let r = RegistryD::start("");
    let sample = f.path("sample.tar");
    let web = format!("docker-archive:{sample}:localhost/whoami/web:latest");
    r.push(&web, "whoami/web:latest");
    r.push(&web, "whoami/bad:1");
    r.push(&web, "whoami/big:1");
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/api:1.0"),
        "whoami/api:1.0",
    );
    let (_, api_id) = r.inspect("whoami/api:1.0");
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(dir.path(), &r.addr());
    proxy.set(serde_json::json!([
        {"path": "/v2/whoami/web/tags/list", "do": "429", "times": 1, "retry_after": 1},
        {"path": "/v2/whoami/bad/manifests/1", "do": "corrupt"},
        {"path": format!("/v2/whoami/api/blobs/{api_id}"), "do": "corrupt"},
        {"path": "/v2/whoami/big/manifests/1", "do": "huge", "bytes": 5 << 20},
    ]));
    let m = Mount::new(&["-o", "nokeep", &format!("reg=registry:{}", proxy.addr())]);
    let log = m.log();
    let host = proxy.addr();

    // 429: asked again after the Retry-After it gave, and then shown
    let asked: Vec<(f64, u16)> = proxy
        .requests()
        .into_iter()
        .filter(|(_, method, path, _)| {
            method == "GET" && path.starts_with("/v2/whoami/web/tags/list")
        })
        .map(|(t, _, _, s)| (t, s))
        .take(2)
        .collect();
    assert_eq!(
        asked.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [429, 200]
    );
    assert!(asked[1].0 - asked[0].0 >= 0.9, "waited {:?}", asked);
    let shown = tags_of(&m, "");
    assert!(
        shown.contains_key(&format!("{}/whoami/web:latest", proxy.addr())),
        "{log}"
    );

    // a manifest or a config that does not hash to its digest: the tag dangles, said
    let dangling = lines(&ok(&format!("cd {} && find . -xtype l", m.p("by-tag"))));
    assert_eq!(
        dangling,
        lines(&format!("./{host}/whoami/api:1.0\n./{host}/whoami/bad:1\n")),
        "{log}"
    );
    assert!(log.matches("hashes to").count() >= 2, "{log}");
    // a manifest over the limit is not read past it, and said
    assert!(!shown.keys().any(|t| t.contains("whoami/big")), "{shown:?}");
    assert!(log.contains("limit"), "{log}");
    assert!(log.contains("whoami/big"), "{log}");
}

/// Writes that fail half-way leave the registry as it was: a same-repository mv
/// whose PUT is refused puts the old tag back, and a blob mount the registry answers
/// with an upload (202) has that upload cancelled and the ln refused.
#[test]
fn registry_writes_that_fail_half_way_leave_the_registry_as_it_was() {
    let f = fixtures();
    let r = RegistryD::start("");
    let sample = f.path("sample.tar");
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/web:latest"),
        "whoami/web:old",
    );
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/api:1.0"),
        "team/other:1",
    );
    let (digest, id) = r.inspect("whoami/web:old");
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(dir.path(), &r.addr());
    proxy.set(serde_json::json!([
        {"path": "/v2/whoami/web/manifests/new", "method": "PUT", "do": "status", "status": 400},
        // the registry is asked to mount from a repository without the blob: it
        // answers, as distribution does, with a new upload (202)
        {"path": "/blobs/uploads/?mount=", "method": "POST", "do": "rewrite",
         "from": "from=whoami/web", "to": "from=nowhere/none"},
    ]));
    let m = Mount::new(&["-o", "nokeep", &format!("registry:{}", proxy.addr())]);
    let whoami = m.p(&format!("by-tag/{}/whoami", proxy.addr()));
    let team = m.p(&format!("by-tag/{}/team", proxy.addr()));

    // distribution deletes by digest: the old tag goes first, the PUT of the new is
    // refused, and the old is put back
    let o = sh(&format!("mv {whoami}/web:old {whoami}/web:new"));
    assert!(!o.status.success(), "mv succeeded");
    assert_eq!(r.tags("whoami/web"), ["old"], "{}", m.log());
    assert_eq!(r.inspect("whoami/web:old"), (digest.clone(), id.clone()));
    assert!(
        proxy
            .requests()
            .iter()
            .any(|(_, method, path, _)| method == "DELETE" && path.contains(&digest)),
        "the old tag was taken off first: {:?}",
        proxy.requests()
    );
    assert!(
        ok(&format!("ls {whoami}")).contains("web:old"),
        "{}",
        m.log()
    );

    // ln into another repository: the mount is answered with an upload, which is
    // cancelled; nothing is tagged and no upload is left open in the registry
    let o = sh(&format!(
        "ln {} {team}/other:copy",
        m.p(&format!("by-id/{id}"))
    ));
    assert!(!o.status.success(), "ln succeeded");
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("Read-only file system"), "{said}");
    assert!(m.log().contains("could not be mounted"), "{}", m.log());
    assert_eq!(r.tags("team/other"), ["1"]);
    let posted = proxy
        .requests()
        .iter()
        .filter(|(_, method, path, status)| {
            method == "POST" && path.contains("/v2/team/other/blobs/uploads/") && *status == 202
        })
        .count();
    assert!(posted >= 1, "{:?}", proxy.requests());
    // distribution leaves a cancelled upload's hash state on disk, and removes its
    // data and its `startedat`, by which it knows an open upload
    let uploads = r
        .dir
        .path()
        .join("data/docker/registry/v2/repositories/team/other/_uploads");
    let started: Vec<PathBuf> = std::fs::read_dir(&uploads)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(!started.is_empty(), "the registry started an upload");
    for upload in started {
        assert!(
            !upload.join("startedat").exists() && !upload.join("data").exists(),
            "upload {} still open",
            upload.display()
        );
    }
}

#[test]
fn a_remount_of_an_unchanged_registry_asks_one_head_per_tag_and_fetches_nothing() {
    let f = fixtures();
    let r = RegistryD::start("");
    let sample = f.path("sample.tar");
    for (src, tags) in [
        ("localhost/whoami/web:latest", &["latest", "v2", "v3"][..]),
        ("localhost/whoami/api:1.0", &["api"][..]),
    ] {
        for t in tags {
            r.push(
                &format!("docker-archive:{sample}:{src}"),
                &format!("app/one:{t}"),
            );
        }
    }
    r.push(
        &format!("oci:{}:localhost/whoami/multi:latest", f.path("multi")),
        "app/one:multi",
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(dir.path(), &r.addr());
    let cache = dir.path().join("cache").display().to_string();
    let spec = format!("registry:{}/app/one", proxy.addr());
    let count = |from: usize, method: &str, part: &str| {
        proxy.requests()[from..]
            .iter()
            .filter(|(_, m, p, _)| m == method && p.contains(part))
            .count()
    };

    // cold: the tags list, one manifest per tag, the index's platform manifest, and
    // one config per image
    let cold = {
        let mut m = Mount::with_env(&[&spec], &[("XDG_CACHE_HOME", &cache)]);
        let shown = tags_of(&m, "");
        assert_eq!(shown.len(), 5, "{}", m.log());
        // SIGTERM unmounts cleanly though the poller thread runs (it was started
        // while the store loaded, and blocks the signal itself)
        let status = m.stop();
        assert!(status.success(), "{status:?}\n{}", m.log());
        shown
    };
    let n = proxy.requests().len();
    assert_eq!(count(0, "GET", "/tags/list"), 1);
    assert_eq!(
        count(0, "GET", "/manifests/"),
        5 + 1,
        "{:?}",
        proxy.requests()
    );
    assert_eq!(count(0, "GET", "/blobs/"), 3);

    // warm: the tags list and a HEAD per tag; no manifest, no config
    let m = Mount::with_env(&[&spec], &[("XDG_CACHE_HOME", &cache)]);
    assert_eq!(tags_of(&m, ""), cold);
    let sums = ok(&format!("cd {} && sha256sum *", m.p("by-id")));
    assert_eq!(sums.lines().count(), 3);
    assert_eq!(count(n, "GET", "/tags/list"), 1);
    assert_eq!(count(n, "HEAD", "/manifests/"), 5);
    assert_eq!(
        count(n, "GET", "/manifests/"),
        0,
        "{:?}",
        &proxy.requests()[n..]
    );
    assert_eq!(
        count(n, "GET", "/blobs/"),
        0,
        "configs are never fetched again"
    );
    drop(m);

    // tags moved in the registry: to a manifest kept already, nothing is fetched; to
    // a new one, that manifest and its config, once
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/api:1.0"),
        "app/one:v3",
    );
    r.push(
        &format!("docker-archive:{sample}:quay.io/app/tool:v1"),
        "app/one:v2",
    );
    let n = proxy.requests().len();
    let m = Mount::with_env(&[&spec], &[("XDG_CACHE_HOME", &cache)]);
    let now = tags_of(&m, "");
    for t in ["v2", "v3"] {
        let name = format!("{}/app/one:{t}", proxy.addr());
        assert_eq!(now[&name], r.inspect(&format!("app/one:{t}")).1, "{t}");
    }
    assert_eq!(
        count(n, "GET", "/manifests/"),
        1,
        "{:?}",
        &proxy.requests()[n..]
    );
    assert_eq!(count(n, "GET", "/blobs/"), 1);
}

/// The question of issue 16: does this node run what the registry serves? A
/// containerd namespace that pulled from the registry, beside the registry, compared
/// with diff and comm; then a tag moves in the registry.
#[test]
fn a_node_beside_the_registry_it_pulled_from_is_compared_with_diff_and_comm() {
    let f = fixtures();
    let r = RegistryD::start("");
    let sample = f.path("sample.tar");
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/web:latest"),
        "whoami/web:latest",
    );
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/api:1.0"),
        "whoami/api:1.0",
    );
    let c = Containerd::start();
    let ctr = c.ctr("k8s.io");
    for image in ["whoami/web:latest", "whoami/api:1.0"] {
        ok(&format!(
            "{ctr} images pull --plain-http {}/{image} >/dev/null",
            r.addr()
        ));
    }
    let m = Mount::new(&[
        "-o",
        "nokeep,registry_refresh=1s",
        &format!("node=containerd:{}#k8s.io", c.root()),
        &format!("reg=registry:{}/whoami/", r.addr()),
    ]);
    let (node, reg) = (m.p("node/by-tag"), m.p("reg/by-tag"));
    // the same tags, naming the same images: no difference
    let o = sh(&format!("diff -rq {reg} {node}"));
    assert!(o.status.success(), "{o:?}\n{}", m.log());

    // the registry's :latest moves to another image: diff names that tag, and comm
    // the node's image the registry no longer has
    let old_web = r.inspect("whoami/web:latest").1;
    r.push(
        &format!("docker-archive:{sample}:quay.io/app/tool:v1"),
        "whoami/web:latest",
    );
    wait_for("the moved tag", || {
        !sh(&format!("diff -rq {reg} {node}")).status.success()
    });
    let said = String::from_utf8_lossy(&sh(&format!("diff -rq {reg} {node}")).stdout).into_owned();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains("web:latest") && said.contains("differ"),
        "{said}"
    );
    let gone = ok(&format!(
        "comm -13 <(ls {}) <(ls {})",
        m.p("reg/by-id"),
        m.p("node/by-id")
    ));
    assert_eq!(gone.trim(), old_web, "images the registry no longer has");
}

/// A registry that stops answering (every request hangs) never hangs the mount: the
/// poll gives up after registry_timeout, the last tree and the configs read are
/// served, a read that needs the registry answers EIO after the timeout, and once the
/// registry answers again its changes show and that read succeeds.
#[test]
fn a_registry_that_hangs_never_hangs_the_mount() {
    let f = fixtures();
    let r = RegistryD::start("");
    let sample = f.path("sample.tar");
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/web:latest"),
        "app/x:1",
    );
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/api:1.0"),
        "app/x:0",
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(dir.path(), &r.addr());
    // cache_size=0: no config is held, so a config not yet read (x:0) needs the
    // registry; one read already (x:1) is in the kernel's page cache
    let m = Mount::new(&[
        "-o",
        "nokeep,cache_size=0,registry_refresh=1s,registry_timeout=2s",
        &format!("registry:{}/app/x", proxy.addr()),
    ]);
    let tag = m.p(&format!("by-tag/{}/app/x:1", proxy.addr()));
    let unread = m.p(&format!("by-tag/{}/app/x:0", proxy.addr()));
    ok(&format!("cat {tag} > /dev/null"));
    proxy.set(serde_json::json!([
        {"path": "/v2/", "method": "GET", "do": "hang", "seconds": 30},
        {"path": "/v2/", "method": "HEAD", "do": "hang", "seconds": 30},
    ]));
    r.push(
        &format!("docker-archive:{sample}:localhost/whoami/api:1.0"),
        "app/x:2",
    );
    // polls hang and time out; every operation on the mount answers at once
    for _ in 0..3 {
        let started = Instant::now();
        let listed = ok(&format!(
            "ls {}",
            m.p(&format!("by-tag/{}/app", proxy.addr()))
        ));
        ok(&format!("cat {tag} > /dev/null"));
        // under the 2 s a request may take: nothing waited on the registry
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            listed.split_whitespace().collect::<Vec<_>>(),
            ["x:0", "x:1"]
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // the config never read waits for the registry, which never answers: EIO once
    // the request's timeout is up, and not much later
    let started = Instant::now();
    let read = Command::new("bash")
        .args(["-c", &format!("cat {unread} > /dev/null")])
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&read.stderr);
    assert!(!read.status.success(), "read while the registry hangs");
    assert!(err.contains("Input/output error"), "{err}\n{}", m.log());
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "EIO after {took:?}"
    );
    assert!(
        m.log().is_empty() || !m.log().contains("panicked"),
        "{}",
        m.log()
    );
    // it answers again: the tag pushed meanwhile shows
    proxy.set(serde_json::json!([]));
    let app = m.p(&format!("by-tag/{}/app", proxy.addr()));
    wait_for("the tag pushed while it hung", || {
        ok(&format!("ls {app}")).lines().count() == 3
    });
    let config = ok(&format!("cat {unread}"));
    let truth = ok(&format!(
        "skopeo inspect --tls-verify=false --config --raw docker://{}/app/x:0",
        r.addr()
    ));
    assert_eq!(config, truth, "read once the registry answers again");
}
