//! Why a Dockerfile build failed, read from the builder's own words, where the reason is one an
//! administrator can change: no base image anywhere the builder may look, or no network for a
//! `RUN` step that fetches.

/// What a failed build lacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lack {
    /// A base image: in no local store, and not pulled.
    BaseImage,
    /// A network: a step could not resolve or reach a host.
    Network,
    /// The build's own network could not be made (buildah's private network: CNI plugins or
    /// their configuration missing, or not allowed).
    NetworkSetup,
}

/// Reads the builder's error and log (`text`), for a Dockerfile starting from `bases`.
pub fn lack(text: &str, bases: &[String]) -> Option<Lack> {
    let t = text.to_ascii_lowercase();
    let image_markers = [
        "image not known",
        "no such image",
        "not found in local storage",
        "short-name resolution",
        "did not resolve to an alias",
        "pull access denied",
        "manifest unknown",
        "repository does not exist",
        "error pulling image",
        "failed to resolve source metadata",
    ];
    if !bases.is_empty() && image_markers.iter().any(|m| t.contains(m)) {
        return Some(Lack::BaseImage);
    }
    let setup_markers = ["cni plugin", "failed to find plugin", "slirp4netns sync pipe"];
    if setup_markers.iter().any(|m| t.contains(m)) {
        return Some(Lack::NetworkSetup);
    }
    let network_markers = [
        "temporary failure in name resolution",
        "temporary failure resolving",
        "could not resolve",
        "bad address",
        "network is unreachable",
        "could not connect",
        "unable to connect",
        "connection refused",
        "no route to host",
    ];
    network_markers.iter().any(|m| t.contains(m)).then_some(Lack::Network)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_builders_say() {
        let bases = vec!["debian:bookworm-slim".to_string()];
        for (text, want) in [
            ("creating build container: debian:bookworm-slim: image not known", Some(Lack::BaseImage)),
            ("pull access denied for debian, repository does not exist", Some(Lack::BaseImage)),
            (
                "Err:1 http://deb.debian.org bookworm InRelease\n  Temporary failure resolving 'deb.debian.org'",
                Some(Lack::Network),
            ),
            ("wget: bad address 'example.org'", Some(Lack::Network)),
            ("wget: can't connect to remote host (198.51.100.2): Network is unreachable", Some(Lack::Network)),
            ("/bin/sh: make: not found", None),
            ("plugin type=\"bridge\" failed (add): cni plugin bridge failed", Some(Lack::NetworkSetup)),
            ("failed to find plugin \"bridge\" in path [/usr/lib/cni]", Some(Lack::NetworkSetup)),
        ] {
            assert_eq!(lack(text, &bases), want, "{text}");
        }
        assert_eq!(lack("image not known", &[]), None, "no base image: FROM scratch");
    }
}
