//! Who may use a node's HTTP API and what files its jobs may read: the API token (made on a
//! node's first start, kept in the home with mode 0600, sent as `Authorization: Bearer`)
//! and the data roots that bound the paths jobs submitted over HTTP may name.
//!
//! The rule (the README's trust model): whoever holds the token and calls from this machine
//! (loopback) is the node's owner, as `myco submit`/`myco run` are: a job may read any path
//! the node can. Everyone else (a client on another machine, always with the token; a local
//! client without it, allowed on a loopback-only API) may name only files below a data root
//! (`--data-root`, repeatable) or the node's models folder, checked after every symlink is
//! resolved.

use std::path::Path;

pub use myco_jobs::access::{Access, Outside};

use subtle::ConstantTimeEq;

/// The API token: 32 random bytes as `myco-` and 64 hex digits.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the API token {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the API token file {path} is empty or malformed; delete it and start the node again to make a new one (clients then need the new token)"
    )]
    Malformed { path: String },
    #[error("no randomness for a new API token: {0}")]
    Random(String),
}

impl ApiToken {
    /// A new random token.
    pub fn generate() -> Result<ApiToken, TokenError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| TokenError::Random(e.to_string()))?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        Ok(ApiToken(format!("myco-{hex}")))
    }

    /// The token a node's home holds, if any.
    pub fn read(path: &Path) -> Result<Option<ApiToken>, TokenError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let t = text.trim();
                if t.len() < 16 || t.contains(char::is_whitespace) {
                    return Err(TokenError::Malformed {
                        path: path.display().to_string(),
                    });
                }
                Ok(Some(ApiToken(t.to_owned())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TokenError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Read the token at `path`, or make one there (mode 0600). Returns whether it is new.
    pub fn load_or_create(path: &Path) -> Result<(ApiToken, bool), TokenError> {
        if let Some(t) = ApiToken::read(path)? {
            return Ok((t, false));
        }
        let token = ApiToken::generate()?;
        crate::private_file::write_private(path, &format!("{}\n", token.0)).map_err(|source| {
            TokenError::Write {
                path: path.display().to_string(),
                source,
            }
        })?;
        Ok((token, true))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token (in constant time).
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        let (t, new) = ApiToken::load_or_create(&path).unwrap();
        assert!(new);
        let (again, new) = ApiToken::load_or_create(&path).unwrap();
        assert!(!new);
        assert!(again.matches(t.as_str()));
        assert!(!t.matches("myco-wrong"));
        assert!(!t.matches(""));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            ApiToken::read(&path),
            Err(TokenError::Malformed { .. })
        ));
    }
}
