//! Registry credentials where Docker keeps them: `auths` in
//! `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`), so a
//! `docker login` works for duet and `duet login` for docker. Credential
//! helpers (`credsStore`, `credHelpers`) are programs duet does not run:
//! an entry that only a helper has is reported, not guessed.

use crate::RegistryError;
use base64::Engine;
use std::path::PathBuf;

/// The docker config file duet reads and `duet login` writes.
pub fn config_path() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("config.json"),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".docker/config.json"),
    }
}

/// The keys a registry's entry may have in `auths`.
fn keys_for(registry: &str) -> Vec<String> {
    if registry == "docker.io" || registry == "index.docker.io" {
        return vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ];
    }
    vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v2/"),
    ]
}

fn read_config() -> Result<Option<(PathBuf, serde_json::Value)>, RegistryError> {
    let path = config_path();
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RegistryError::Io {
                what: "cannot read",
                path,
                source,
            })
        }
    };
    let v = serde_json::from_slice(&text).map_err(|e| RegistryError::Credentials {
        path: path.clone(),
        message: format!("not valid JSON: {e}"),
    })?;
    Ok(Some((path, v)))
}

/// User and password for `registry`, if the docker config has them.
pub fn credentials(registry: &str) -> Result<Option<(String, String)>, RegistryError> {
    let Some((path, v)) = read_config()? else {
        return Ok(None);
    };
    let bad = |message: String| RegistryError::Credentials {
        path: path.clone(),
        message,
    };
    for key in keys_for(registry) {
        let Some(entry) = v.get("auths").and_then(|a| a.get(&key)) else {
            continue;
        };
        if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(format!("auths.\"{key}\".auth is not base64: {e}")))?;
            let text = String::from_utf8(raw)
                .map_err(|_| bad(format!("auths.\"{key}\".auth is not UTF-8")))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| bad(format!("auths.\"{key}\".auth is not user:password")))?;
            return Ok(Some((u.to_string(), p.to_string())));
        }
        if let (Some(u), Some(p)) = (
            entry.get("username").and_then(|a| a.as_str()),
            entry.get("password").and_then(|a| a.as_str()),
        ) {
            return Ok(Some((u.to_string(), p.to_string())));
        }
    }
    let helper = v
        .get("credHelpers")
        .and_then(|h| h.get(registry))
        .or_else(|| v.get("credsStore"))
        .and_then(|h| h.as_str());
    if let Some(h) = helper {
        eprintln!(
            "duet: note: {} names the credential helper `docker-credential-{h}` for {registry}; duet does not run credential helpers, so it pulls anonymously (use `duet login {registry}`)",
            path.display()
        );
    }
    Ok(None)
}

/// Stores user and password for `registry` in the docker config (mode
/// 0600, written atomically, every other key kept).
pub fn store(registry: &str, user: &str, password: &str) -> Result<PathBuf, RegistryError> {
    let (path, mut v) = match read_config()? {
        Some(c) => c,
        None => (config_path(), serde_json::json!({})),
    };
    if !v.is_object() {
        return Err(RegistryError::Credentials {
            path,
            message: "the top level is not a JSON object".into(),
        });
    }
    let key = keys_for(registry).remove(0);
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let auths = v
        .as_object_mut()
        .expect("checked above")
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}));
    if !auths.is_object() {
        *auths = serde_json::json!({});
    }
    auths
        .as_object_mut()
        .expect("made an object")
        .insert(key, serde_json::json!({ "auth": auth }));
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    let io = |what: &'static str, p: &PathBuf| {
        let p = p.clone();
        move |source| RegistryError::Io {
            what,
            path: p,
            source,
        }
    };
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    let tmp = dir.join(format!(".config.json.duet-{}", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("cannot write", &tmp))?;
        let text = serde_json::to_vec_pretty(&v).expect("a JSON value serializes");
        f.write_all(&text).map_err(io("cannot write", &tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io("cannot write", &path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DOCKER_CONFIG is process-wide: one test touches it.
    #[test]
    fn stored_credentials_read_back_and_other_keys_stay() {
        let d = tempfile::tempdir().unwrap();
        std::env::set_var("DOCKER_CONFIG", d.path());
        assert_eq!(credentials("127.0.0.1:5000").unwrap(), None);
        std::fs::write(
            d.path().join("config.json"),
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="}}, "psFormat": "x"}"#,
        )
        .unwrap();
        assert_eq!(
            credentials("docker.io").unwrap(),
            Some(("hub".into(), "secret".into()))
        );
        let p = store("127.0.0.1:5000", "me", "p:w").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            credentials("127.0.0.1:5000").unwrap(),
            Some(("me".into(), "p:w".into()))
        );
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "x");
        assert!(v["auths"]["https://index.docker.io/v1/"].is_object());
        std::fs::write(&p, r#"{"auths": {"127.0.0.1:5000": {"auth": "%%%"}}}"#).unwrap();
        let e = credentials("127.0.0.1:5000").unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("base64"), "{e}");
        std::env::remove_var("DOCKER_CONFIG");
    }
}
