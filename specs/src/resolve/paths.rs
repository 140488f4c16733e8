//! Path and image-reference syntax.

/// An absolute path in normal form: starts with '/', no `.`/`..`/empty
/// components, no trailing '/', no NUL.
pub fn absolute_clean(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("must be an absolute path");
    }
    if p.contains('\0') {
        return Err("must not contain a NUL byte");
    }
    if p == "/" {
        return Ok(());
    }
    if p[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("must be normalised: no '..', '.', '//' or trailing '/'");
    }
    Ok(())
}

/// True when `p` is `root` or lies under it (component-wise).
pub fn is_under(p: &str, root: &str) -> bool {
    p == root
        || p.strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Checks an image reference: `[host[:port]/]path[:tag][@algo:hex]`, the
/// syntax of the distribution reference grammar.
pub fn image_reference(r: &str) -> Result<(), String> {
    if r.is_empty() {
        return Err("must not be empty".into());
    }
    if r.len() > 4096 {
        return Err("is longer than 4096 characters".into());
    }
    if let Some((i, ch)) = r.char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
        return Err(format!("invalid character {ch:?} at index {i}"));
    }
    let (name_tag, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        let (algo, hex) = d
            .split_once(':')
            .ok_or_else(|| format!("digest {d:?} must be algorithm:hex"))?;
        let algo_ok = !algo.is_empty()
            && algo
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        let hex_ok = hex.len() >= 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !algo_ok || !hex_ok || (algo == "sha256" && hex.len() != 64) {
            return Err(format!(
                "digest {d:?} is malformed (e.g. sha256:<64 hex digits>)"
            ));
        }
    }
    // A tag follows the last ':' that comes after the last '/'.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
            });
        if !ok {
            return Err(format!("tag {t:?} is malformed: up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-'"));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (h, port) = match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        if h.is_empty()
            || !h
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(format!("registry host {host:?} is malformed"));
        }
        if let Some(p) = port {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("registry port in {host:?} is malformed"));
            }
        }
    }
    for part in parts {
        if !path_component(part) {
            return Err(format!(
                "repository path component {part:?} is malformed: lower case letters and digits, separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn path_component(s: &str) -> bool {
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
        // A separator: '.', '_', '__' or a run of '-'.
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// The tag of a reference, `None` when it has none (or only a digest).
pub fn image_tag(r: &str) -> Option<&str> {
    let name_tag = r.split('@').next().unwrap_or(r);
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    name_tag[last_slash..]
        .rfind(':')
        .map(|i| &name_tag[last_slash + i + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_absolute_paths_only() {
        assert!(absolute_clean("/var/log").is_ok());
        assert!(absolute_clean("/").is_ok());
        assert!(absolute_clean("var/log").is_err());
        assert!(absolute_clean("/var/../etc").is_err());
        assert!(absolute_clean("/var//log").is_err());
        assert!(absolute_clean("/var/log/").is_err());
        assert!(absolute_clean("/var/./log").is_err());
    }

    #[test]
    fn under_is_component_wise() {
        assert!(is_under("/proc", "/proc"));
        assert!(is_under("/proc/sys", "/proc"));
        assert!(!is_under("/process", "/proc"));
    }

    #[test]
    fn image_references_follow_the_distribution_grammar() {
        for ok in [
            "busybox",
            "busybox:latest",
            "library/busybox:1.36",
            "registry.example.com:5000/team/app:v1.2-rc_3",
            "localhost/app",
            "ghcr.io/a/b/c@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "my_app__x.y-z",
        ] {
            assert!(
                image_reference(ok).is_ok(),
                "{ok}: {:?}",
                image_reference(ok)
            );
        }
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busy box",
            "app@sha256:abc",
            "a//b",
            "-app",
            "app_",
            "reg.io:port/app",
        ] {
            assert!(image_reference(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn tags_are_found_after_the_last_slash() {
        assert_eq!(image_tag("reg:5000/app"), None);
        assert_eq!(image_tag("reg:5000/app:v1"), Some("v1"));
        assert_eq!(image_tag("app@sha256:00"), None);
    }
}
