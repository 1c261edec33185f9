//! The HTTP side of a registry: one keep-alive agent per registry host, TLS verified
//! against the CAs the command line names, plain HTTP only to loopback (or with
//! `registry_insecure`), the bearer-token and Basic challenges, and retries of 429 and
//! 5xx answers that honour `Retry-After`. Every request has a timeout, and every body a
//! size limit. Credentials are never logged and never sent over plain HTTP except to
//! loopback.
//!
//! ureq, not an async client: the source's calls are synchronous (the catalog asks for
//! one config at a time, and a scan runs a bounded pool of threads), and ureq pools
//! connections per host with rustls (ring) and no C library of the system's.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{debug, warn};
use ureq::http::{self, HeaderMap, Method, StatusCode};

use super::credentials::Credentials;
pub use super::proxy::Proxies;
use crate::source::StoreError;

/// How a registry is reached, from the command line.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// PEM files of the CAs a registry's certificate may chain to: the system's bundle
    /// and `-o registry_ca=`.
    pub ca_files: Vec<PathBuf>,
    /// `-o registry_insecure`: plain HTTP (and unverified TLS names) to any host.
    pub insecure: bool,
    /// `-o registry_parallel=`: requests in flight at once.
    pub parallel: usize,
    /// `-o registry_timeout=`: the longest a request may take, body included.
    pub timeout: Duration,
    /// `-o registry_refresh=`: how often tags are polled for changes.
    pub refresh: Duration,
    /// Credential files, first match wins: podman's auth.json, Docker's config.json.
    pub auth_files: Vec<PathBuf>,
    /// `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY`.
    pub proxies: Proxies,
    /// `-o cache_size=`: the verified config bytes a registry store holds, at most.
    /// Reads past it are fetched again, so they wait on the registry.
    pub config_bytes: usize,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            ca_files: Vec::new(),
            insecure: false,
            parallel: 16,
            timeout: Duration::from_secs(30),
            refresh: Duration::from_secs(30),
            auth_files: Vec::new(),
            proxies: Proxies::default(),
            config_bytes: crate::config_cache::DEFAULT_CACHE_SIZE as usize,
        }
    }
}

/// Retries of a 429 or 5xx answer before it is an error.
const RETRIES: u32 = 4;
/// The longest `Retry-After` honoured; a registry asking for more is an error now.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(20);
/// Bearer tokens without `expires_in` live 60 s (the distribution spec's default).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);
/// A CA bundle is a few hundred KiB.
const CA_FILE_LIMIT: u64 = 16 << 20;
/// Token answers and error bodies are small.
const SMALL_BODY: u64 = 1 << 20;

/// An answer: its status, headers and body (read up to the request's limit).
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Https,
    Http,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

struct Token {
    value: String,
    until: Instant,
}

pub struct Client {
    /// Direct, for this machine and the hosts `NO_PROXY` names.
    agent: ureq::Agent,
    /// Through `HTTPS_PROXY`, for https URLs; through `HTTP_PROXY`, for http ones.
    via_https_proxy: Option<ureq::Agent>,
    via_http_proxy: Option<ureq::Agent>,
    proxies: Proxies,
    /// `host[:port]`, as in the image references.
    host: String,
    loopback: bool,
    insecure: bool,
    /// Decided at the first answer: https, or http where that is allowed and https is
    /// not spoken.
    scheme: Mutex<Option<Scheme>>,
    credentials: Option<Credentials>,
    /// Bearer tokens by the scope they were asked for.
    tokens: Mutex<HashMap<String, Token>>,
    /// The registry asked for Basic: send it unasked from then on.
    basic: Mutex<bool>,
    /// Held while a token is fetched, so that the requests challenged at once (a
    /// scan's first ones, all in parallel) wait for one token instead of each asking.
    fetching: Mutex<()>,
}

/// Is `host[:port]` this machine?
pub fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn transport(what: &str, e: ureq::Error) -> StoreError {
    let kind = match &e {
        ureq::Error::Timeout(_) => io::ErrorKind::TimedOut,
        ureq::Error::HostNotFound => io::ErrorKind::NotFound,
        ureq::Error::Io(io) => io.kind(),
        _ => io::ErrorKind::Other,
    };
    StoreError::io(what, io::Error::new(kind, e.to_string()))
}

impl Client {
    pub fn new(
        host: &str,
        options: &RegistryOptions,
        credentials: Option<Credentials>,
    ) -> Result<Client, StoreError> {
        let mut roots = Vec::new();
        for file in &options.ca_files {
            let pem = match crate::store_file::read_config_file(file, CA_FILE_LIMIT) {
                Ok(p) => p,
                // the system bundle may be absent; a named CA must be there
                Err(e) => {
                    return Err(StoreError::io(file.display(), e));
                }
            };
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => roots.push(c.to_owned()),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(StoreError::format(
                            file.display(),
                            format!("not a PEM certificate file: {e}"),
                        ));
                    }
                }
            }
        }
        let roots = if roots.is_empty() {
            ureq::tls::RootCerts::WebPki
        } else {
            ureq::tls::RootCerts::Specific(Arc::new(roots))
        };
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(roots)
            .disable_verification(options.insecure)
            .build();
        let agent = |proxy: Option<ureq::Proxy>| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(options.timeout))
                .tls_config(tls.clone())
                // which proxy is decided here, from what the command line read
                .proxy(proxy)
                .max_idle_connections_per_host(options.parallel.max(1) * 2)
                .max_idle_connections(options.parallel.max(1) * 4)
                .user_agent(concat!("imagefs/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        let via = |url: &Option<String>, var: &str| -> Result<Option<ureq::Agent>, StoreError> {
            let Some(url) = url else { return Ok(None) };
            // the URL may hold a password: not shown
            let proxy = ureq::Proxy::new(url)
                .map_err(|e| StoreError::format(var, format!("not a proxy URL ({e})")))?;
            Ok(Some(agent(Some(proxy))))
        };
        Ok(Client {
            via_https_proxy: via(&options.proxies.https, "HTTPS_PROXY")?,
            via_http_proxy: via(&options.proxies.http, "HTTP_PROXY")?,
            proxies: options.proxies.clone(),
            agent: agent(None),
            host: host.to_string(),
            loopback: is_loopback(host),
            insecure: options.insecure,
            scheme: Mutex::new(None),
            credentials,
            tokens: Mutex::new(HashMap::new()),
            basic: Mutex::new(false),
            fetching: Mutex::new(()),
        })
    }

    /// The agent for a request to `url`: through the proxy for its scheme, unless its
    /// host goes direct.
    fn agent_for(&self, url: &http::Uri) -> &ureq::Agent {
        let via = match url.scheme_str() {
            Some("https") => self.via_https_proxy.as_ref(),
            _ => self.via_http_proxy.as_ref(),
        };
        match (via, url.authority()) {
            (Some(via), Some(host)) if !self.proxies.bypass(host.as_str()) => via,
            _ => &self.agent,
        }
    }

    /// Credentials travel over TLS, or to this machine.
    fn may_send_credentials(&self, scheme: Scheme) -> bool {
        scheme == Scheme::Https || self.loopback
    }

    /// Runs one request on the registry: `path` is the part after the host
    /// (`/v2/…`), `scope` the token scope it needs (`repository:NAME:pull`). The body
    /// is read up to `limit` bytes; more is an error.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        scope: &str,
        limit: u64,
    ) -> Result<Reply, StoreError> {
        let mut challenged = false;
        let mut retries = 0;
        loop {
            // https until the first answer said otherwise
            let scheme = self.scheme.lock().unwrap_or(Scheme::Https);
            let reply = self.send_once(scheme, &method, path, headers, body, scope, limit);
            let (scheme, reply) = match reply {
                Ok(r) => {
                    self.scheme.lock().get_or_insert(scheme);
                    (scheme, r)
                }
                Err(e) if self.scheme.lock().is_none() && scheme == Scheme::Https => {
                    // Plain HTTP where it is allowed and the host speaks no TLS; never
                    // past a certificate that does not verify, and only when the host
                    // then answers as a plain HTTP server would. That answer is this
                    // request's.
                    let refused_certificate = e.to_string().to_lowercase().contains("certificate");
                    if refused_certificate {
                        return Err(e);
                    }
                    if !(self.loopback || self.insecure) {
                        // what rustls says when a plain HTTP server answers
                        if e.to_string().contains("InvalidContentType") {
                            return Err(StoreError::NotPermitted(format!(
                                "registry {}: answers without TLS ({e}): plain HTTP is spoken only to this machine, or with -o registry_insecure",
                                self.host
                            )));
                        }
                        return Err(e);
                    }
                    match self.send_once(Scheme::Http, &method, path, headers, body, scope, limit) {
                        Ok(r)
                            if !(r.status == 400
                                && String::from_utf8_lossy(&r.body).contains("HTTPS")) =>
                        {
                            debug!(host = %self.host, "no TLS answer ({e}): plain HTTP");
                            *self.scheme.lock() = Some(Scheme::Http);
                            (Scheme::Http, r)
                        }
                        _ => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            match reply.status {
                401 if !challenged => {
                    challenged = true;
                    if self.answer_challenge(scheme, &reply, scope)? {
                        continue;
                    }
                    return Ok(reply);
                }
                429 | 500..=599 if retries < RETRIES => {
                    retries += 1;
                    let wait = retry_after(&reply)
                        .unwrap_or(Duration::from_millis(200 << retries))
                        .min(MAX_RETRY_AFTER);
                    warn!(host = %self.host, status = reply.status, "{method} {path}: retrying in {wait:?}");
                    std::thread::sleep(wait);
                }
                _ => return Ok(reply),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_once(
        &self,
        scheme: Scheme,
        method: &Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        scope: &str,
        limit: u64,
    ) -> Result<Reply, StoreError> {
        let url = format!("{}://{}{path}", scheme.as_str(), self.host);
        let mut req = http::Request::builder().method(method.clone()).uri(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(auth) = self.authorization(scheme, scope) {
            req = req.header("Authorization", auth);
        }
        let req = req
            .body(body.map(<[u8]>::to_vec).unwrap_or_default())
            .map_err(|e| StoreError::internal(format!("registry {}", self.host), e))?;
        let mut resp = self
            .agent_for(req.uri())
            .run(req)
            .map_err(|e| transport(&format!("registry {}", self.host), e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = if *method == Method::HEAD {
            Vec::new()
        } else {
            resp.body_mut()
                .with_config()
                .limit(limit)
                .read_to_vec()
                .map_err(|e| match e {
                    ureq::Error::BodyExceedsLimit(_) => StoreError::format(
                        format!("registry {}: {method} {path}", self.host),
                        format!("answer over the {limit}-byte limit"),
                    ),
                    other => transport(&format!("registry {}", self.host), other),
                })?
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    fn authorization(&self, scheme: Scheme, scope: &str) -> Option<String> {
        if !self.may_send_credentials(scheme) {
            return None;
        }
        if let Some(t) = self.tokens.lock().get(scope)
            && t.until > Instant::now()
        {
            return Some(format!("Bearer {}", t.value));
        }
        match (&self.credentials, *self.basic.lock()) {
            (Some(c), true) => Some(c.basic_header()),
            _ => None,
        }
    }

    /// Answers a 401's `WWW-Authenticate`; true when the request is worth sending again.
    fn answer_challenge(
        &self,
        scheme: Scheme,
        reply: &Reply,
        scope: &str,
    ) -> Result<bool, StoreError> {
        let Some(challenge) = reply.header("www-authenticate") else {
            return Ok(false);
        };
        let (kind, params) = parse_challenge(challenge);
        if kind.eq_ignore_ascii_case("basic") {
            // an identity token is for a token endpoint, not a password
            if self.credentials.as_ref().is_none_or(|c| c.identity_token)
                || !self.may_send_credentials(scheme)
            {
                return Ok(false);
            }
            *self.basic.lock() = true;
            return Ok(true);
        }
        if !kind.eq_ignore_ascii_case("bearer") {
            return Ok(false);
        }
        let Some(realm) = params.get("realm") else {
            return Ok(false);
        };
        let sent = self.authorization(scheme, scope);
        let _one = self.fetching.lock();
        // another request's challenge may have brought a token since this one was sent
        let now = self.authorization(scheme, scope);
        if now.is_some() && now != sent {
            return Ok(true);
        }
        debug!(host = %self.host, scope, "asking for a token");
        let asked = params.get("scope").map(String::as_str).unwrap_or(scope);
        let token = self.fetch_token(realm, params.get("service"), asked)?;
        self.tokens.lock().insert(scope.to_string(), token);
        Ok(true)
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&String>,
        scope: &str,
    ) -> Result<Token, StoreError> {
        let what = format!("registry {}: token endpoint {realm}", self.host);
        let realm_uri: http::Uri = realm
            .parse()
            .map_err(|e| StoreError::format(&what, format!("not a URL: {e}")))?;
        let realm_tls = realm_uri.scheme_str() == Some("https");
        let realm_local = realm_uri.host().is_some_and(is_loopback);
        if !realm_tls && !realm_local && !self.insecure {
            return Err(StoreError::NotPermitted(format!(
                "{what}: not https: no token asked for"
            )));
        }
        let mut query = Vec::new();
        if let Some(s) = service {
            query.push(format!("service={}", urlencode(s)));
        }
        // several scopes (a blob mount's) are several parameters
        for one in scope.split(' ').filter(|s| !s.is_empty()) {
            query.push(format!("scope={}", urlencode(one)));
        }
        let credentials = self
            .credentials
            .as_ref()
            .filter(|_| realm_tls || realm_local);
        let req = match credentials.and_then(Credentials::refresh_token) {
            // an identity token is exchanged by the OAuth2 form (the distribution
            // token spec's POST), with the scopes space-separated in one field
            Some(refresh) => {
                let mut form = vec![
                    "grant_type=refresh_token".to_string(),
                    "client_id=imagefs".to_string(),
                    format!("refresh_token={}", urlencode(refresh)),
                    format!("scope={}", urlencode(scope.trim())),
                ];
                if let Some(s) = service {
                    form.push(format!("service={}", urlencode(s)));
                }
                http::Request::builder()
                    .method(Method::POST)
                    .uri(realm)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form.join("&").into_bytes())
            }
            None => {
                let sep = if realm.contains('?') { '&' } else { '?' };
                let url = format!("{realm}{sep}{}", query.join("&"));
                let mut req = http::Request::builder().method(Method::GET).uri(&url);
                if let Some(c) = credentials {
                    req = req.header("Authorization", c.basic_header());
                }
                req.body(Vec::new())
            }
        }
        .map_err(|e| StoreError::internal(&what, e))?;
        let mut resp = self
            .agent_for(req.uri())
            .run(req)
            .map_err(|e| transport(&what, e))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .with_config()
            .limit(SMALL_BODY)
            .read_to_vec()
            .map_err(|e| transport(&what, e))?;
        if status != StatusCode::OK {
            return Err(StoreError::NotPermitted(format!(
                "{what}: refused a token for {scope} ({status})"
            )));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| StoreError::format(&what, format!("not a token answer: {e}")))?;
        let value = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| StoreError::format(&what, "the answer holds no token"))?;
        let life = answer
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFE);
        // a little early, so that a token never expires in flight
        let until = Instant::now() + life.saturating_sub(Duration::from_secs(5));
        Ok(Token { value, until })
    }
}

/// `Retry-After: <seconds>` (the HTTP-date form is taken as "soon").
fn retry_after(reply: &Reply) -> Option<Duration> {
    let v = reply.header("retry-after")?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

/// `Bearer realm="…",service="…",scope="a,b"` → ("Bearer", {realm, service, scope}).
pub fn parse_challenge(s: &str) -> (String, HashMap<String, String>) {
    let s = s.trim();
    let (kind, rest) = s.split_once(' ').unwrap_or((s, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key, value.trim().to_string());
    }
    (kind.to_string(), params)
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_commas_inside_quotes() {
        let (kind, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(kind, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (kind, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(kind, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
        let (_, p) = parse_challenge("Bearer realm=https://x/t, service=x");
        assert_eq!(p["realm"], "https://x/t");
        assert_eq!(p["service"], "x");
    }

    #[test]
    fn loopback_hosts_are_recognised_with_and_without_ports() {
        for h in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
            "127.3.2.1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "registry.example:5000",
            "10.0.0.1",
            "[2001:db8::1]:443",
            "localhost.example",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn credentials_go_over_plain_http_only_to_loopback() {
        let creds = || Some(Credentials::new("u", "pw", "auth.json".into()));
        let options = RegistryOptions {
            insecure: true,
            ..Default::default()
        };
        let far = Client::new("10.1.2.3:5000", &options, creds()).unwrap();
        *far.basic.lock() = true;
        assert_eq!(far.authorization(Scheme::Http, "s"), None);
        assert!(far.authorization(Scheme::Https, "s").is_some());
        let near = Client::new("127.0.0.1:5000", &options, creds()).unwrap();
        *near.basic.lock() = true;
        assert!(near.authorization(Scheme::Http, "s").is_some());
        // a token, too, only where credentials may go
        far.tokens.lock().insert(
            "s".into(),
            Token {
                value: "t".into(),
                until: Instant::now() + Duration::from_secs(60),
            },
        );
        assert_eq!(far.authorization(Scheme::Http, "s"), None);
        assert_eq!(far.authorization(Scheme::Https, "s").unwrap(), "Bearer t");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            urlencode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
