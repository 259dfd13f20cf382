//! The versioned envelope around everything myco stores or sends between nodes: one tag
//! byte ([`TAG`]), the format version (u16, little-endian), then the body (bincode, or raw
//! bytes for stored results).
//!
//! Why a tag byte: before versions existed, records and frames were bare bincode, and bare
//! bincode of every type we store or send starts with a varint (a length, an enum index, an
//! integer), which is never `0xFF` (bincode's varints start with 0..=254). JSON Lines results
//! start with `{` or are empty. So a reader tells an unversioned value (version 0) from a
//! versioned one by its first byte, and old files need no rewrite: each value is read by
//! the decoder of its own version and migrated in memory, and written back in the newest
//! format the next time it changes.
//!
//! Nothing here knows a record or a message type; see `queue/store.rs` and
//! `cluster/wire.rs` for who uses which version.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every versioned value.
pub const TAG: u8 = 0xFF;
/// Tag and version.
pub const HEADER: usize = 3;
/// The version of values written before versions existed (no header).
pub const UNVERSIONED: u16 = 0;

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Written by a newer myco.
    #[error(
        "{what} of format {found}, written by a newer myco (this build reads formats {oldest} to {newest}): upgrade this node to the newer myco"
    )]
    Newer {
        what: &'static str,
        found: u16,
        oldest: u16,
        newest: u16,
    },
    /// Written by a myco this build no longer reads.
    #[error(
        "{what} of format {found}, written by an older myco (this build reads formats {oldest} to {newest}): upgrade the node that wrote it"
    )]
    Older {
        what: &'static str,
        found: u16,
        oldest: u16,
        newest: u16,
    },
    /// The right version, but the bytes do not decode.
    #[error("{what} of format {version} does not decode: {why}")]
    Malformed {
        what: &'static str,
        version: u16,
        why: String,
    },
}

/// A value's version and body: [`UNVERSIONED`] and all of `bytes` when it has no header.
pub fn split(bytes: &[u8]) -> (u16, &[u8]) {
    match bytes {
        [TAG, lo, hi, body @ ..] => (u16::from_le_bytes([*lo, *hi]), body),
        // A lone tag or a cut header: no version reads it (it decodes as nothing).
        [TAG, ..] => (u16::MAX, &[]),
        _ => (UNVERSIONED, bytes),
    }
}

/// Check that `version` is one this build reads (`oldest..=newest`).
pub fn check(
    what: &'static str,
    version: u16,
    oldest: u16,
    newest: u16,
) -> Result<(), FormatError> {
    if version > newest {
        Err(FormatError::Newer {
            what,
            found: version,
            oldest,
            newest,
        })
    } else if version < oldest {
        Err(FormatError::Older {
            what,
            found: version,
            oldest,
            newest,
        })
    } else {
        Ok(())
    }
}

/// The header of a value of `version`, with room for `body` more bytes.
pub fn header(version: u16, body: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body);
    out.push(TAG);
    out.extend_from_slice(&version.to_le_bytes());
    out
}

/// Raw bytes under a header (stored results).
pub fn wrap(version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = header(version, body.len());
    out.extend_from_slice(body);
    out
}

/// `value` in bincode under a header of `version` ([`UNVERSIONED`]: bare bincode).
pub fn encode<T: Serialize>(version: u16, value: &T) -> Result<Vec<u8>, String> {
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    if version == UNVERSIONED {
        return Ok(body);
    }
    let mut out = header(version, body.len());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A bincode body, with no length inside it claiming more than `LIMIT` bytes.
pub fn decode_body<T: DeserializeOwned, const LIMIT: usize>(
    what: &'static str,
    version: u16,
    body: &[u8],
) -> Result<T, FormatError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    bincode::serde::decode_from_slice(body, config)
        .map(|(v, _)| v)
        .map_err(|e| FormatError::Malformed {
            what,
            version,
            why: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_told_apart_from_bare_bincode() {
        let v = encode(3, &("a".to_owned(), 7u64)).unwrap();
        let (version, body) = split(&v);
        assert_eq!(version, 3);
        let got: (String, u64) = decode_body::<_, 1024>("t", version, body).unwrap();
        assert_eq!(got, ("a".to_owned(), 7));
        let bare = encode(UNVERSIONED, &("a".to_owned(), 7u64)).unwrap();
        assert_eq!(split(&bare).0, UNVERSIONED);
        assert_eq!(split(b"{\"x\":1}\n").0, UNVERSIONED);
        assert_eq!(split(b"").0, UNVERSIONED);
        assert_eq!(split(&[TAG, 1]).0, u16::MAX);
        let e = check("a job record", 9, 0, 1).unwrap_err();
        assert!(e.to_string().contains("newer myco"), "{e}");
        assert!(check("x", 0, 1, 2).is_err());
        assert!(check("x", 1, 0, 1).is_ok());
    }

    #[test]
    fn bare_bincode_never_starts_with_the_tag() {
        // Varints, lengths and enum indices: the first bytes of what we store and send.
        for n in [0u64, 1, 197, 250, 251, 255, 65_535, u64::MAX] {
            let b = encode(UNVERSIONED, &n).unwrap();
            assert_ne!(b[0], TAG, "{n}");
            let s = encode(UNVERSIONED, &"x".repeat(n.min(70_000) as usize)).unwrap();
            assert_ne!(s[0], TAG, "{n}");
        }
    }
}
