//! Which HTTP proxy a registry request goes through, as Go's programs (podman,
//! skopeo, docker) decide it from `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY`: by the
//! URL's scheme, never for this machine, and not for a host `NO_PROXY` names. The
//! variables are read on the command line and handed down.

use std::net::IpAddr;

/// The proxies the environment names, and the hosts that bypass them.
#[derive(Clone, Debug, Default)]
pub struct Proxies {
    /// For https URLs (`HTTPS_PROXY`).
    pub https: Option<String>,
    /// For plain http URLs (`HTTP_PROXY`).
    pub http: Option<String>,
    /// `NO_PROXY`, split at commas: hosts, domains (`.example` or `example`, with
    /// their subdomains), IPs, CIDR blocks, each with or without a port; `*` for all.
    pub no_proxy: Vec<String>,
}

impl Proxies {
    /// From `NO_PROXY`'s value.
    pub fn split_no_proxy(value: &str) -> Vec<String> {
        value
            .split(',')
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect()
    }

    /// Does a request to `host` (`name[:port]`, `[v6]:port`) go direct?
    pub fn bypass(&self, host: &str) -> bool {
        let (name, port) = split_host(host);
        let name = name.to_ascii_lowercase();
        if name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.no_proxy
            .iter()
            .any(|entry| matches(entry, &name, port))
    }
}

/// `name[:port]`, `[v6]:port` or a bare v6 address, as its name and port.
fn split_host(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (name, after.strip_prefix(':'));
    }
    if host.matches(':').count() > 1 {
        return (host, None);
    }
    match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    }
}

fn matches(entry: &str, name: &str, port: Option<&str>) -> bool {
    if entry == "*" {
        return true;
    }
    if let Some((net, bits)) = entry.split_once('/') {
        return match (
            net.parse::<IpAddr>(),
            bits.parse::<u32>(),
            name.parse::<IpAddr>(),
        ) {
            (Ok(net), Ok(bits), Ok(ip)) => in_block(ip, net, bits),
            _ => false,
        };
    }
    let (want, want_port) = split_host(entry);
    if want_port.is_some_and(|p| Some(p) != port) {
        return false;
    }
    let want = want.trim_start_matches("*.").trim_start_matches('.');
    !want.is_empty() && (name == want || name.ends_with(&format!(".{want}")))
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_names_hosts_domains_blocks_and_ports_and_loopback_is_always_direct() {
        let p = Proxies {
            https: Some("http://proxy.example:3128".into()),
            http: None,
            no_proxy: Proxies::split_no_proxy(
                " .corp.example, registry.example:5000,10.0.0.0/8, fd00::/8 ,plain.example",
            ),
        };
        for direct in [
            "127.0.0.1:5000",
            "localhost",
            "[::1]:5000",
            "a.corp.example",
            "corp.example:443",
            "registry.example:5000",
            "10.1.2.3:5000",
            "[fd00::1]:5000",
            "plain.example",
            "sub.plain.example:1",
        ] {
            assert!(p.bypass(direct), "{direct}");
        }
        for proxied in [
            "registry.example:5001",
            "registry.example",
            "notcorp.example",
            "11.0.0.1",
            "[fe80::1]:5000",
            "xplain.example",
            "quay.io",
        ] {
            assert!(!p.bypass(proxied), "{proxied}");
        }
        let all = Proxies {
            no_proxy: Proxies::split_no_proxy("*"),
            ..Proxies::default()
        };
        assert!(all.bypass("quay.io"));
        assert!(in_block(
            "0.0.0.1".parse().unwrap(),
            "9.9.9.9".parse().unwrap(),
            0
        ));
    }
}
