//! Credentials and region from the AWS shared files — `~/.aws/credentials` and
//! `~/.aws/config`, or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE` — for the profile
//! `AWS_PROFILE` names (else `default`), as the AWS SDKs read them. object_store's S3 builder
//! covers the rest of the standard chain (environment, web identity, container, instance) but
//! not these files.

use std::path::{Path, PathBuf};

/// What a profile gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// The files and profile the environment names.
pub fn from_env() -> Option<Profile> {
    let credentials = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".aws/credentials")));
    let config = std::env::var_os("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".aws/config")));
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_owned());
    read(credentials.as_deref(), config.as_deref(), &profile)
}

/// `profile` from the two files (either may be missing); `None` when neither has it.
pub fn read(credentials: Option<&Path>, config: Option<&Path>, profile: &str) -> Option<Profile> {
    let load = |p: Option<&Path>| p.and_then(|p| ini::Ini::load_from_file(p).ok());
    let creds = load(credentials);
    let conf = load(config);
    // The credentials file names sections by the profile; the config file `profile NAME`
    // (except `default`).
    let in_creds = creds.as_ref().and_then(|i| i.section(Some(profile)));
    let config_section = if profile == "default" {
        "default".to_owned()
    } else {
        format!("profile {profile}")
    };
    let in_conf = conf
        .as_ref()
        .and_then(|i| i.section(Some(config_section.as_str())));
    if in_creds.is_none() && in_conf.is_none() {
        return None;
    }
    let get = |key: &str| {
        in_creds
            .and_then(|s| s.get(key))
            .or_else(|| in_conf.and_then(|s| s.get(key)))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    Some(Profile {
        access_key_id: get("aws_access_key_id"),
        secret_access_key: get("aws_secret_access_key"),
        session_token: get("aws_session_token"),
        region: in_conf
            .and_then(|s| s.get("region"))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_named_profile_is_read_from_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let conf = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = defsecret\n\n\
             [archive]\naws_access_key_id=ARC\naws_secret_access_key=arcsecret\n\
             aws_session_token = tok\n",
        )
        .unwrap();
        std::fs::write(
            &conf,
            "[default]\nregion = us-east-1\n[profile archive]\nregion = eu-west-1\n",
        )
        .unwrap();
        let p = read(Some(&creds), Some(&conf), "archive").unwrap();
        assert_eq!(
            p,
            Profile {
                access_key_id: Some("ARC".into()),
                secret_access_key: Some("arcsecret".into()),
                session_token: Some("tok".into()),
                region: Some("eu-west-1".into()),
            }
        );
        let d = read(Some(&creds), Some(&conf), "default").unwrap();
        assert_eq!(d.access_key_id.as_deref(), Some("DEF"));
        assert_eq!(d.region.as_deref(), Some("us-east-1"));
        assert!(read(Some(&creds), Some(&conf), "nope").is_none());
        assert!(read(None, None, "default").is_none());
        // Keys may live in the config file alone.
        let only_conf = read(None, Some(&conf), "archive").unwrap();
        assert_eq!(only_conf.access_key_id, None);
        assert_eq!(only_conf.region.as_deref(), Some("eu-west-1"));
    }
}
