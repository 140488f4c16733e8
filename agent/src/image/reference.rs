//! Image references as Docker and the kubelet read them: `busybox` is
//! `docker.io/library/busybox:latest`; the first component names a registry
//! when it has a `.` or a `:`, or is `localhost`.

use std::fmt;

/// A reference split into where it lives and what is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `registry.example:5000`, `localhost`.
    pub registry: String,
    /// `library/busybox`, `team/app`.
    pub repository: String,
    /// Absent when only a digest is given.
    pub tag: Option<String>,
    /// `sha256:…`: the image is pinned and never re-resolved.
    pub digest: Option<String>,
}

/// Docker Hub's name and the host its API is served from.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Docker Hub's other host names as `docker.io`; any other host as it is.
pub fn canonical_registry(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        h => h.to_string(),
    }
}

impl Reference {
    /// Parses and normalises `r` (the manifest's syntax rules apply).
    pub fn parse(r: &str) -> Result<Reference, String> {
        specs::resolve::paths::image_reference(r)?;
        let (name_tag, digest) = match r.split_once('@') {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (r, None),
        };
        let tag = specs::resolve::paths::image_tag(name_tag).map(str::to_string);
        let name = match &tag {
            Some(t) => &name_tag[..name_tag.len() - t.len() - 1],
            None => name_tag,
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = canonical_registry(&registry);
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("repository {repository:?} must be lower case"));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What the manifest is fetched by: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The host (and port) the registry's API answers on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    /// The fully qualified form: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_as_docker_does() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        for (r, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("team/app", "docker.io/team/app:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
            ),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:v2", "localhost:5000/app:v2"),
            ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t"),
            ("ghcr.io/org/app:1.0", "ghcr.io/org/app:1.0"),
            // A first component without '.' or ':' is a Hub namespace.
            ("registry/app", "docker.io/registry/app:latest"),
        ] {
            assert_eq!(Reference::parse(r).unwrap().to_string(), want, "{r}");
        }
        let pinned = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(
            (pinned.tag.as_deref(), pinned.manifest_ref()),
            (None, d.as_str())
        );
        assert_eq!(pinned.to_string(), format!("docker.io/library/busybox@{d}"));
        let both = Reference::parse(&format!("busybox:1@{d}")).unwrap();
        assert_eq!(both.manifest_ref(), d, "the digest wins");
        assert_eq!(
            Reference::parse("busybox").unwrap().api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(
            Reference::parse("localhost:5000/app").unwrap().api_host(),
            "localhost:5000"
        );
    }

    #[test]
    fn bad_references_say_why() {
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("Busybox").is_err());
        assert!(Reference::parse("busybox@sha256:12").is_err());
    }
}
