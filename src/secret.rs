//! Secrets: tokens, passwords and webhook secrets, and where they come from.
//!
//! A [`Secret`] never shows its value in `Debug` or `Display`, so it cannot reach a log line, an error
//! message or `--json` by accident; [`Secret::expose`] is the one way to read it. A [`TokenSource`] says where
//! a secret is read from (a literal, a file, an environment variable) and reads it when it is needed, so a
//! rotated `token_file` is picked up without a restart.

use std::fmt;
use std::path::{Path, PathBuf};

/// A token or password. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: String) -> Secret {
        Secret(value)
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret cannot be read now. Says where it was looked for, never what it is.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretError {
    #[error("token_file {raw:?}: {error}")]
    Path { raw: String, error: ExpandError },
    #[error("cannot read token_file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("token_file {} is a folder: point token_file at the file that holds the token", path.display())]
    IsFolder { path: PathBuf },
    #[error("environment variable {0} (token_env) is not set")]
    EnvUnset(String),
    #[error("{0} is empty")]
    Empty(String),
    #[error(
        "{0} holds a line break or other control character inside the token; it must hold the token alone"
    )]
    Control(String),
}

/// Why `${VAR}` in a path cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ExpandError {
    #[error("unclosed `${{`")]
    Unclosed,
    #[error("environment variable {0} is not set")]
    Unset(String),
}

/// Where a token comes from.
#[derive(Clone)]
pub(crate) enum TokenSource {
    /// A literal `token` in the file: works, but `check` warns about it.
    Literal(Secret),
    File(SecretFile),
    Env(String),
}

/// A secret's file as written in the configuration. `${VAR}` is expanded when the file is read, not when the
/// configuration is loaded, so `token_file = "${CREDENTIALS_DIRECTORY}/gitlab"` does not stop `status` or
/// `models` from working outside the service.
#[derive(Clone)]
pub(crate) struct SecretFile {
    raw: String,
    base: PathBuf,
}

impl SecretFile {
    /// The file written as `raw`, relative to `base` (the configuration file's folder) unless absolute.
    pub(crate) fn new(raw: &str, base: &Path) -> SecretFile {
        SecretFile {
            raw: raw.to_string(),
            base: base.to_path_buf(),
        }
    }

    /// The path now: variables expanded, relative to the configuration's folder.
    pub(crate) fn path(&self) -> Result<PathBuf, SecretError> {
        let expanded = expand_vars(&self.raw).map_err(|error| SecretError::Path {
            raw: self.raw.clone(),
            error,
        })?;
        let p = PathBuf::from(expanded);
        Ok(if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        })
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Literal(_) => f.write_str("Literal(<redacted>)"),
            TokenSource::File(p) => write!(f, "File({})", p.raw),
            TokenSource::Env(n) => write!(f, "Env({n})"),
        }
    }
}

impl TokenSource {
    /// Read the token now. A token with a control character inside (a second line, a NUL) is refused: it
    /// would break the HTTP header it goes into.
    pub(crate) fn resolve(&self) -> Result<Secret, SecretError> {
        let (value, from) = match self {
            TokenSource::Literal(s) => (
                s.expose().trim().to_string(),
                "the literal token".to_string(),
            ),
            TokenSource::File(file) => {
                let path = file.path()?;
                if path.is_dir() {
                    return Err(SecretError::IsFolder { path });
                }
                match std::fs::read_to_string(&path) {
                    Ok(text) => (
                        text.trim().to_string(),
                        format!("token_file {}", path.display()),
                    ),
                    Err(error) => return Err(SecretError::Read { path, error }),
                }
            }
            TokenSource::Env(name) => match std::env::var(name) {
                Ok(v) => (
                    v.trim().to_string(),
                    format!("environment variable {name} (token_env)"),
                ),
                Err(_) => return Err(SecretError::EnvUnset(name.clone())),
            },
        };
        if value.is_empty() {
            return Err(SecretError::Empty(from));
        }
        if value.chars().any(char::is_control) {
            return Err(SecretError::Control(from));
        }
        Ok(Secret::new(value))
    }
}

/// Replace `${VAR}` with the environment variable's value (so `token_file = "${CREDENTIALS_DIRECTORY}/gitlab"`
/// works under systemd).
pub(crate) fn expand_vars(raw: &str) -> Result<String, ExpandError> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(ExpandError::Unclosed);
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(ExpandError::Unset(name.to_string())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_and_sources_say_where_they_looked() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(
            format!("{:?}", TokenSource::Literal(s)),
            "Literal(<redacted>)"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("two-lines"), "a\nb\n").unwrap();
        std::fs::write(dir.path().join("blank"), "  \n").unwrap();
        let file = |name: &str| TokenSource::File(SecretFile::new(name, dir.path())).resolve();
        assert!(matches!(file("two-lines"), Err(SecretError::Control(_))));
        assert!(matches!(file("blank"), Err(SecretError::Empty(_))));
        let e = file("missing").unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read token_file ") && e.contains("missing"),
            "{e}"
        );
        assert_eq!(
            expand_vars("${MODELMIRROR_UNSET_FOR_TEST}/x"),
            Err(ExpandError::Unset("MODELMIRROR_UNSET_FOR_TEST".into()))
        );
        assert_eq!(expand_vars("${x"), Err(ExpandError::Unclosed));
        assert_eq!(expand_vars("plain"), Ok("plain".into()));
    }
}
