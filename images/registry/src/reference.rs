//! Image references as Docker writes them (`debian`, `library/debian:12`,
//! `registry.example:5000/team/app@sha256:...`), parsed by oci-spec's
//! distribution `Reference` (which applies docker.io and its `library/`
//! rule), and the name a pulled image gets in duet's store.

use crate::RegistryError;
use oci_spec::distribution::Reference;

/// Parses `text` as an image reference; a missing tag means `latest`.
pub fn parse(text: &str) -> Result<Reference, RegistryError> {
    text.parse::<Reference>()
        .map_err(|e| RegistryError::BadReference {
            reference: text.to_string(),
            message: e.to_string(),
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
