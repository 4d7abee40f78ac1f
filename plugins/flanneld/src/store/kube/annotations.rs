//! flannel's Node annotations: upstream's names under a prefix
//! (`--kube-annotation-prefix`, normalised and checked as upstream does,
//! except that the whole prefix must match, not just its end).

/// The annotation keys, each the normalised prefix and a fixed suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// `"true"` on a Node whose agent uses the kube subnet manager.
    pub managed: String,
    pub backend_type: String,
    pub backend_data: String,
    pub backend_v6_data: String,
    pub public_ip: String,
    pub public_ipv6: String,
    /// Written by a person: this node's public addresses (as
    /// `--public-ip`), read at start.
    pub node_public_ip: String,
    pub node_public_ipv6: String,
    /// Written by a person: published instead of the detected address.
    pub public_ip_overwrite: String,
    pub public_ipv6_overwrite: String,
}

/// The prefix as upstream normalises it: a `/` added when it has none, a
/// `-` after a name behind the `/`.
pub fn normalise(prefix: &str) -> Result<String, String> {
    let mut p = prefix.to_string();
    match p.matches('/').count() {
        0 => p.push('/'),
        1 => {}
        _ => {
            return Err(format!(
                "--kube-annotation-prefix {prefix:?}: at most one '/' (a domain, then an optional name)"
            ));
        }
    }
    if !p.ends_with('/') && !p.ends_with('-') {
        p.push('-');
    }
    let re = regex::Regex::new(r"^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
        .map_err(|e| e.to_string())?;
    if !re.is_match(&p) {
        return Err(format!(
            "--kube-annotation-prefix {prefix:?}: must be a lower-case domain, optionally with '/name' (e.g. flannel.alpha.coreos.com or example.com/net)"
        ));
    }
    Ok(p)
}

impl Annotations {
    pub fn new(prefix: &str) -> Result<Annotations, String> {
        let p = normalise(prefix)?;
        let key = |suffix: &str| format!("{p}{suffix}");
        Ok(Annotations {
            managed: key("kube-subnet-manager"),
            backend_type: key("backend-type"),
            backend_data: key("backend-data"),
            backend_v6_data: key("backend-v6-data"),
            public_ip: key("public-ip"),
            public_ipv6: key("public-ipv6"),
            node_public_ip: key("node-public-ip"),
            node_public_ipv6: key("node-public-ipv6"),
            public_ip_overwrite: key("public-ip-overwrite"),
            public_ipv6_overwrite: key("public-ipv6-overwrite"),
        })
    }

    /// Whether `key` is one of ours (the rest of a Node's annotations are
    /// not kept).
    pub fn holds(&self, key: &str) -> bool {
        [
            &self.managed,
            &self.backend_type,
            &self.backend_data,
            &self.backend_v6_data,
            &self.public_ip,
            &self.public_ipv6,
            &self.node_public_ip,
            &self.node_public_ipv6,
            &self.public_ip_overwrite,
            &self.public_ipv6_overwrite,
        ]
        .iter()
        .any(|k| *k == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalised_as_upstream_does() {
        for (given, want) in [
            ("flannel.alpha.coreos.com", "flannel.alpha.coreos.com/"),
            ("flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/"),
            ("example.com/foo", "example.com/foo-"),
            ("example.com/foo-", "example.com/foo-"),
            ("org.com/9", "org.com/9-"),
        ] {
            assert_eq!(normalise(given).as_deref(), Ok(want), "{given}");
        }
        let a = Annotations::new("example.com/foo").unwrap();
        assert_eq!(a.backend_type, "example.com/foo-backend-type");
        assert_eq!(
            Annotations::new("flannel.alpha.coreos.com")
                .unwrap()
                .managed,
            "flannel.alpha.coreos.com/kube-subnet-manager"
        );
    }

    #[test]
    fn bad_prefixes_are_refused_with_a_reason() {
        for bad in [
            "org",
            "org/",
            "org/prefix",
            "org.COM",
            "org.com/PREFIX",
            "org.com/a.b",
            "Org.com",
            "a b.c",
        ] {
            let e = normalise(bad).unwrap_err();
            assert!(e.contains("lower-case domain"), "{bad}: {e}");
        }
        assert!(normalise("a/b/c").unwrap_err().contains("at most one '/'"));
    }
}
