//! Where a remote is and how to reach it: its URL, and the S3 options (credentials, region,
//! endpoint) the caller hands in. The library reads no environment and no file here; the CLI
//! fills [`RemoteOptions`] from the standard `AWS_*` variables and from `~/.aws/credentials`
//! and `~/.aws/config`, whose text [`RemoteOptions::from_aws`] parses.
//!
//! Invariant: credentials never reach an error message, a log line, `--json` output or the
//! store: [`S3Credentials`]'s `Debug` prints no secret, and nothing here is serialized.
#![warn(missing_docs)]

use crate::remote::error::RemoteError;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A parsed remote URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteUrl {
    /// `s3://BUCKET[/PREFIX]`.
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix inside it, without leading or trailing `/` (may be empty).
        prefix: String,
    },
    /// `file:///ABSOLUTE/PATH`: a directory, typically on a shared filesystem.
    File {
        /// The directory.
        path: PathBuf,
    },
}

impl RemoteUrl {
    /// Parse `s3://BUCKET[/PREFIX]` or `file:///ABSOLUTE/PATH`. Fails with
    /// [`RemoteError::BadUrl`] for another scheme, an empty or malformed bucket name, a prefix
    /// with empty, `.` or `..` components, or a relative file path.
    pub fn parse(url: &str) -> Result<RemoteUrl, RemoteError> {
        let bad = |why: &str| RemoteError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        if url.chars().any(|c| c.is_control()) {
            return Err(bad("it contains control characters"));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let ok_bucket = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && !bucket.starts_with(['-', '.'])
                && !bucket.ends_with(['-', '.']);
            if !ok_bucket {
                return Err(bad(
                    "the bucket name must be 3-63 lowercase letters, digits, '-' or '.'",
                ));
            }
            let prefix = prefix.trim_end_matches('/');
            if !prefix.is_empty()
                && prefix
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(bad("the prefix has an empty, '.' or '..' component"));
            }
            return Ok(RemoteUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad("a file URL needs an absolute path: file:///dir"));
            }
            if rest.split('/').any(|c| c == "..") {
                return Err(bad("the path has a '..' component"));
            }
            return Ok(RemoteUrl::File {
                path: PathBuf::from(rest),
            });
        }
        Err(bad("use s3://BUCKET/PREFIX or file:///PATH"))
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            RemoteUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            RemoteUrl::File { path } => write!(f, "file://{}", path.display()),
        }
    }
}

/// Static S3 credentials. `Debug` shows the key id's first four characters only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Credentials {
    /// `AWS_ACCESS_KEY_ID` / `aws_access_key_id`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY` / `aws_secret_access_key`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN` / `aws_session_token`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: String = self.access_key_id.chars().take(4).collect();
        write!(f, "S3Credentials({shown}..., secret and token hidden)")
    }
}

/// How to reach S3-compatible remotes. Unused for `file://` remotes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteOptions {
    /// Static credentials; `None` sends unsigned requests (a public bucket).
    pub credentials: Option<S3Credentials>,
    /// The region (`AWS_REGION`, `region` in `~/.aws/config`); `us-east-1` when unset.
    pub region: Option<String>,
    /// The endpoint (`AWS_ENDPOINT_URL`, `endpoint_url`), for servers other than AWS.
    pub endpoint: Option<String>,
    /// Allow plain `http://` endpoints (`AWS_ALLOW_HTTP=true`).
    pub allow_http: bool,
}

/// The sections of an INI file such as `~/.aws/credentials`: section name to key to value.
/// Comments (`#`, `;`) and blank lines are skipped; keys are lowercased.
fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

impl RemoteOptions {
    /// Options from the text of `~/.aws/credentials` and `~/.aws/config` (either may be
    /// empty) for `profile` (`default` when `None`), the way the AWS CLI reads them: static keys
    /// from the credentials file's `[PROFILE]` section, falling back to the config file's;
    /// `region` and `endpoint_url` from the config file's `[default]` or `[profile PROFILE]`
    /// section. SSO, roles and credential processes are not read.
    pub fn from_aws(credentials: &str, config: &str, profile: Option<&str>) -> RemoteOptions {
        let profile = profile.unwrap_or("default");
        let creds = parse_ini(credentials);
        let conf = parse_ini(config);
        let conf_section = if profile == "default" {
            conf.get("default")
        } else {
            conf.get(&format!("profile {profile}"))
        };
        let get = |key: &str| -> Option<String> {
            creds
                .get(profile)
                .and_then(|s| s.get(key))
                .or_else(|| conf_section.and_then(|s| s.get(key)))
                .cloned()
        };
        let credentials = match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (Some(id), Some(secret)) => Some(S3Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: get("aws_session_token"),
            }),
            _ => None,
        };
        RemoteOptions {
            credentials,
            region: conf_section.and_then(|s| s.get("region")).cloned(),
            endpoint: conf_section.and_then(|s| s.get("endpoint_url")).cloned(),
            allow_http: false,
        }
    }

    /// Options the way the AWS CLI finds them, through the caller's accessors (the library reads
    /// no environment itself): `var` gives a variable's value, `read` a file's text. Reads
    /// `$AWS_SHARED_CREDENTIALS_FILE` (else `$HOME/.aws/credentials`) and `$AWS_CONFIG_FILE`
    /// (else `$HOME/.aws/config`) for `$AWS_PROFILE`, then lays the variables over them
    /// ([`RemoteOptions::with_env`]).
    pub fn discover(
        var: impl Fn(&str) -> Option<String>,
        read: impl Fn(&std::path::Path) -> Option<String>,
    ) -> RemoteOptions {
        let home = var("HOME").map(PathBuf::from);
        let file = |name: &str, default: &str| -> String {
            var(name)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
                .and_then(|p| read(&p))
                .unwrap_or_default()
        };
        let profile = var("AWS_PROFILE");
        RemoteOptions::from_aws(
            &file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            &file("AWS_CONFIG_FILE", "config"),
            profile.as_deref(),
        )
        .with_env(var)
    }

    /// Lay the standard variables over these options: `vars` gives each variable's value
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3`, `AWS_ALLOW_HTTP`).
    /// Variables win over files, as in the AWS CLI; a key pair from variables replaces the
    /// files' pair whole.
    pub fn with_env(mut self, vars: impl Fn(&str) -> Option<String>) -> RemoteOptions {
        let nonempty = |k: &str| vars(k).filter(|v| !v.is_empty());
        if let (Some(id), Some(secret)) = (
            nonempty("AWS_ACCESS_KEY_ID"),
            nonempty("AWS_SECRET_ACCESS_KEY"),
        ) {
            self.credentials = Some(S3Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: nonempty("AWS_SESSION_TOKEN"),
            });
        }
        if let Some(r) = nonempty("AWS_REGION").or_else(|| nonempty("AWS_DEFAULT_REGION")) {
            self.region = Some(r);
        }
        if let Some(e) = nonempty("AWS_ENDPOINT_URL_S3").or_else(|| nonempty("AWS_ENDPOINT_URL")) {
            self.endpoint = Some(e);
        }
        if let Some(v) = nonempty("AWS_ALLOW_HTTP") {
            self.allow_http = v.eq_ignore_ascii_case("true") || v == "1";
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_refused() {
        assert_eq!(
            RemoteUrl::parse("s3://my-bucket/runs/a/").unwrap(),
            RemoteUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "runs/a".into()
            }
        );
        assert_eq!(
            RemoteUrl::parse("file:///mnt/shared/cairn").unwrap(),
            RemoteUrl::File {
                path: "/mnt/shared/cairn".into()
            }
        );
        for bad in [
            "http://x/y",
            "s3://",
            "s3://A_BUCKET/x",
            "s3://bucket/a//b",
            "s3://bucket/../b",
            "file://relative/path",
            "file:///a/../b",
            "s3://bucket/a\nb",
        ] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn aws_files_and_variables_are_read_like_the_aws_cli() {
        let creds = "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n\
                     [work]\naws_access_key_id=AKIAWORK\naws_secret_access_key=s2\naws_session_token=t\n";
        let conf = "[default]\nregion = eu-west-1\n# a comment\n[profile work]\nregion=us-west-2\n\
                    endpoint_url = http://127.0.0.1:8333\n";
        let d = RemoteOptions::from_aws(creds, conf, None);
        assert_eq!(d.credentials.as_ref().unwrap().access_key_id, "AKIADEFAULT");
        assert_eq!(d.region.as_deref(), Some("eu-west-1"));
        let w = RemoteOptions::from_aws(creds, conf, Some("work"));
        assert_eq!(
            w.credentials.as_ref().unwrap().session_token.as_deref(),
            Some("t")
        );
        assert_eq!(w.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        let env = w.with_env(|k| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIAENV".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("s3".into()),
            "AWS_ALLOW_HTTP" => Some("true".into()),
            _ => None,
        });
        let c = env.credentials.as_ref().unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token.as_deref()),
            ("AKIAENV", None)
        );
        assert!(env.allow_http);
        let shown = format!("{env:?}");
        assert!(
            !shown.contains("s3\"") && !shown.contains("AKIAENV"),
            "{shown}"
        );
    }
}
