//! Writing a secret to disk: readable by its owner only (mode 0600 on Unix), and whole or
//! not at all (a temporary file renamed over the old one). The swarm secret and the API
//! token are kept this way.

use std::path::Path;

/// Write `text` to `path`, mode 0600, atomically.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path)
}
