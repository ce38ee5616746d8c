//! Image references as Docker writes them (`debian`, `library/debian:12`,
//! `registry.example:5000/team/app@sha256:...`), as oci-spec's
//! distribution `Reference` (docker.io and its `library/` rule applied),
//! and the name a pulled image gets in duet's store.

use crate::RegistryError;
use oci_spec::distribution::Reference;
use std::sync::OnceLock;

/// The reference grammar of distribution's `reference` package (what
/// Docker accepts), as oci-spec writes it, but ASCII: Go's `\w` is ASCII
/// and Rust's Unicode. oci-spec's own parse compiles the Unicode `\w{0,127}`
/// of the tag into an automaton that took ~50 ms, paid by every pull and
/// every `duet run` of a short name; this one compiles in well under a
/// millisecond. Captures: name, tag, digest.
const GRAMMAR: &str = r"(?-u)^((?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))+)?(?::[0-9]+)?/)?[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?(?:(?:/[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?)+)?)(?::([\w][\w.-]{0,127}))?(?:@([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}))?$";

/// The longest repository name distribution accepts.
const NAME_MAX: usize = 255;

fn grammar() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(GRAMMAR).expect("the reference grammar compiles"))
}

/// Registry and repository of a validated name, as distribution's
/// `splitDomain` splits it: a first component with a `.` or a `:`, or
/// `localhost`, is a registry; else it is Docker Hub's, where a name
/// without a `/` is one of its official images (`library/`).
fn split_domain(name: &str) -> (String, String) {
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if registry == "index.docker.io" {
        registry = "docker.io".to_string();
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    (registry, repository)
}

/// Parses `text` as an image reference; a missing tag means `latest`.
pub fn parse(text: &str) -> Result<Reference, RegistryError> {
    let bad = |message: &str| RegistryError::BadReference {
        reference: text.to_string(),
        message: message.to_string(),
    };
    if text.is_empty() {
        return Err(bad("repository name must have at least one component"));
    }
    let caps = grammar()
        .captures(text)
        .ok_or_else(|| bad("invalid reference format"))?;
    let (registry, repository) = split_domain(&caps[1]);
    if repository.len() > NAME_MAX {
        return Err(bad(&format!(
            "repository name must not be more than {NAME_MAX} characters"
        )));
    }
    let tag = caps.get(2).map(|m| m.as_str().to_string());
    let digest = caps.get(3).map(|m| m.as_str().to_string());
    if let Some(d) = &digest {
        // Digests are hex of their algorithm's whole size.
        let want = match d.split_once(':') {
            Some(("sha256", _)) => 64,
            Some(("sha384", _)) => 96,
            Some(("sha512", _)) => 128,
            _ => return Err(bad("unsupported digest algorithm")),
        };
        if d.len() - d.find(':').expect("split above") - 1 != want {
            return Err(bad("invalid checksum digest length"));
        }
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t, d),
        (None, Some(d)) => Reference::with_digest(registry, repository, d),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest".into())),
    })
}

/// The store name of a pulled image, as `docker images` shows it:
/// `debian:12` for Docker Hub's official images, `team/app:1` for other
/// Docker Hub repositories, `host:port/repo:tag` elsewhere, and
/// `repo@sha256:...` when the reference names a digest.
pub fn store_name(r: &Reference) -> String {
    let repo = if r.registry() == "docker.io" {
        r.repository()
            .strip_prefix("library/")
            .unwrap_or(r.repository())
            .to_string()
    } else {
        format!("{}/{}", r.registry(), r.repository())
    };
    match (r.digest(), r.tag()) {
        (Some(d), _) => format!("{repo}@{d}"),
        (None, Some(t)) => format!("{repo}:{t}"),
        (None, None) => format!("{repo}:latest"),
    }
}

/// Whether the registry of `r` is this machine (plain HTTP is allowed to
/// it with `--insecure`; to any other host only when named explicitly).
pub fn is_loopback(r: &Reference) -> bool {
    let host = r.registry();
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_names_are_short_and_others_keep_their_registry() {
        for (text, want) in [
            ("debian", "debian:latest"),
            ("library/debian:12", "debian:12"),
            ("docker.io/library/debian:12", "debian:12"),
            ("team/app:1", "team/app:1"),
            ("registry.example:5000/team/app:v2", "registry.example:5000/team/app:v2"),
            (
                "127.0.0.1:5000/app@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "127.0.0.1:5000/app@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            ),
        ] {
            assert_eq!(store_name(&parse(text).unwrap()), want, "{text}");
        }
    }

    #[test]
    fn bad_references_name_themselves() {
        for text in ["Debian", "a//b", "x:", "app@sha256:12", ""] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{text}`")), "{text}: {e}");
        }
    }

    /// The same references as oci-spec's parser gives, for its own test
    /// cases and Docker's, and the same refusals.
    #[test]
    fn parses_as_oci_spec_does() {
        let f = "f".repeat(64);
        let good = [
            "busybox".to_string(),
            "test.com:tag".into(),
            "test.com:5000".into(),
            "test.com/repo:tag".into(),
            "test:5000/repo".into(),
            "test:5000/repo:tag".into(),
            format!("test:5000/repo@sha256:{f}"),
            format!("test:5000/repo:tag@sha256:{f}"),
            "lowercase:Uppercase".into(),
            "sub-dom1.foo.com/bar/baz/quux".into(),
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
            "b.gcr.io/test.example.com/my-app:test.example.com".into(),
            "xn--n3h.com/myimage:xn--n3h.com".into(),
            format!("xn--7o8h.com/myimage:xn--7o8h.com@sha512:{f}{f}"),
            "foo_bar.com:8080".into(),
            "foo/foo_bar.com:8080".into(),
            "opensuse/leap:15.3".into(),
            "index.docker.io/library/debian:12".into(),
            "docker.io/team/app".into(),
            "localhost/app:1".into(),
            "localhost:5000/a/b/c:v1.2_3-x".into(),
            "127.0.0.1:5000/app__x/y.z-w".into(),
            format!("a:{}", "t".repeat(128)),
        ];
        for text in &good {
            let theirs: Reference = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            let ours = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(ours, theirs, "{text}");
            assert_eq!(ours.whole(), theirs.whole(), "{text}");
        }
        let bad = [
            "".to_string(),
            "Debian".into(),
            "a//b".into(),
            "x:".into(),
            "app@sha256:12".into(),
            format!("app@sha256:{f}0"),
            format!("app@md5:{f}"),
            format!("a:{}", "t".repeat(129)),
            "a:-tag".into(),
            "-a".into(),
            "a/".into(),
            "a:tag:tag".into(),
            "a b".into(),
            "a:t\u{e9}".into(),
            "caf\u{e9}".into(),
            format!("{}/x", "a".repeat(300)),
            format!("x/{}", "a".repeat(300)),
        ];
        for text in &bad {
            assert!(
                text.parse::<Reference>().is_err() || text.contains('\u{e9}'),
                "{text}"
            );
            assert!(parse(text).is_err(), "{text} is accepted");
        }
    }

    #[test]
    fn loopback_registries() {
        for (text, want) in [
            ("127.0.0.1:5000/a", true),
            ("localhost:5000/a", true),
            ("registry.example:5000/a", false),
            ("debian", false),
        ] {
            assert_eq!(is_loopback(&parse(text).unwrap()), want, "{text}");
        }
    }
}
