//! The `/etc/hosts` and `/etc/resolv.conf` a pod's containers get, in the
//! kubelet's format. Pure text in, text out: the caller writes the files.

use std::net::IpAddr;

/// What the pod asks of its resolver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    /// `dnsPolicy: None`: only what is below; otherwise the node's
    /// resolv.conf with what is below merged in.
    pub replace: bool,
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`.
    pub options: Vec<String>,
}

/// The kubelet's limits: 3 nameservers, 32 search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// `/etc/hosts`: localhost, the pod's own name and address, then the
/// `hostAliases` entries.
pub fn hosts_file(hostname: &str, ip: Option<IpAddr>, aliases: &[(String, Vec<String>)]) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    if !aliases.is_empty() {
        s.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in aliases {
            s.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    s
}

/// `/etc/resolv.conf` from the node's file and the pod's settings, merged as
/// the kubelet merges `dnsConfig`: nameservers and searches appended without
/// duplicates (and cut to the limits), options replaced by name.
pub fn resolv_conf(node: &str, dns: &DnsSettings) -> String {
    let (mut servers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
    if !dns.replace {
        for line in node.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => servers.extend(words.next().map(str::to_string)),
                Some("search" | "domain") => searches = words.map(str::to_string).collect(),
                Some("options") => options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
    }
    for n in &dns.nameservers {
        if !servers.contains(n) {
            servers.push(n.clone());
        }
    }
    for s in &dns.searches {
        if !searches.contains(s) {
            searches.push(s.clone());
        }
    }
    for o in &dns.options {
        let name = o.split(':').next().unwrap_or(o);
        options.retain(|x: &String| x.split(':').next() != Some(name));
        options.push(o.clone());
    }
    servers.truncate(MAX_NAMESERVERS);
    searches.truncate(MAX_SEARCHES);
    let mut out = String::new();
    for n in &servers {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_has_localhost_the_pod_and_its_aliases() {
        let h = hosts_file(
            "web",
            Some("10.88.0.2".parse().unwrap()),
            &[("10.0.0.9".into(), vec!["db".into(), "db.local".into()])],
        );
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("10.88.0.2\tweb\n"));
        assert!(h.ends_with("# Entries added by HostAliases.\n10.0.0.9\tdb\tdb.local\n"));
    }

    #[test]
    fn the_node_resolver_is_inherited_and_merged() {
        let node = "# comment\nnameserver 10.0.0.1\nsearch corp.example\noptions ndots:1 edns0\n";
        let dns = DnsSettings {
            replace: false,
            nameservers: vec!["10.0.0.1".into(), "1.1.1.1".into()],
            searches: vec!["svc.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(node, &dns),
            "nameserver 10.0.0.1\nnameserver 1.1.1.1\nsearch corp.example svc.local\noptions edns0 ndots:5\n"
        );
    }

    #[test]
    fn dns_policy_none_uses_only_the_pods_settings() {
        let dns = DnsSettings {
            replace: true,
            nameservers: vec!["9.9.9.9".into()],
            ..DnsSettings::default()
        };
        assert_eq!(
            resolv_conf("nameserver 10.0.0.1\n", &dns),
            "nameserver 9.9.9.9\n"
        );
    }
}
