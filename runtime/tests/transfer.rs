//! Bulk transfer between two TLS ends of one swarm on loopback: a whole file fetched by its
//! hash, a fetch cut off and resumed from what is on disk, a damaged chunk fetched again, a
//! stranger (another swarm's secret) refused.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use myco_runtime::cluster::secret::SwarmSecret;
use myco_runtime::cluster::transfer::{self, CHUNK, Files, ServeOptions, TransferError, part_path};

/// A file of `chunks` and a half chunks of pseudo-random bytes, and its SHA-256.
fn model(dir: &std::path::Path, chunks: u64) -> (PathBuf, String, Vec<u8>) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let bytes: Vec<u8> = (0..(chunks * CHUNK + CHUNK / 2))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let path = dir.join("model.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let sha = myco_jobs::model::identity::sha256_hex(&bytes);
    (path, sha, bytes)
}

/// A server of `path` (as `sha`) on 127.0.0.1; its address.
async fn server(secret: &SwarmSecret, path: PathBuf, sha: String, opts: ServeOptions) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let files: Files = Arc::new(move |h: &str| (h == sha).then(|| path.clone()));
    tokio::spawn(transfer::serve(
        listener,
        secret.tls().unwrap(),
        files,
        opts,
    ));
    addr
}

fn plain() -> ServeOptions {
    ServeOptions {
        rate: None,
        corrupt_chunk: None,
        slicer: None,
    }
}

#[tokio::test]
async fn a_file_travels_whole_resumes_after_a_cut_and_a_damaged_chunk_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let (path, sha, bytes) = model(dir.path(), 6);
    let size = bytes.len() as u64;
    let secret = SwarmSecret::generate().unwrap();
    let client = secret.tls().unwrap();

    // Whole.
    let addr = server(&secret, path.clone(), sha.clone(), plain()).await;
    let dest = dir.path().join("got/whole.gguf");
    let got = transfer::fetch(&client, &addr, &sha, &dest, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(got.size, size);
    assert_eq!(got.received, size);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert!(!part_path(&dest).exists());

    // Cut off mid-way (a slow holder, the fetch dropped), then resumed.
    let slow = server(
        &secret,
        path.clone(),
        sha.clone(),
        ServeOptions {
            rate: Some(2 * CHUNK),
            corrupt_chunk: None,
            slicer: None,
        },
    )
    .await;
    let dest = dir.path().join("got/resumed.gguf");
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s2 = seen.clone();
    let cut = tokio::time::timeout(
        Duration::from_millis(1500),
        transfer::fetch(&client, &slow, &sha, &dest, &move |at, _| {
            s2.store(at, std::sync::atomic::Ordering::SeqCst);
        }),
    )
    .await;
    assert!(cut.is_err(), "it was meant to be cut off");
    let kept = std::fs::metadata(part_path(&dest)).unwrap().len();
    assert!(kept >= CHUNK && kept < size, "kept {kept} of {size}");
    let first = seen.load(std::sync::atomic::Ordering::SeqCst);
    let got = transfer::fetch(&client, &addr, &sha, &dest, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    // It went on from what it had: in all, well under 1.25 times the file.
    let total = first + got.received;
    assert!(
        (total as f64) < 1.25 * size as f64,
        "{total} bytes in all for {size}"
    );
    assert_eq!(got.received, size - kept / CHUNK * CHUNK);

    // A chunk damaged on the way is detected and fetched again (once: the rest resumes).
    let bad = server(
        &secret,
        path.clone(),
        sha.clone(),
        ServeOptions {
            rate: None,
            corrupt_chunk: Some(2),
            slicer: None,
        },
    )
    .await;
    let dest = dir.path().join("got/damaged.gguf");
    let got = transfer::fetch(&client, &bad, &sha, &dest, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(got.received, size + CHUNK, "chunk 2 came twice");

    // A hash the holder does not have.
    let err = transfer::fetch(
        &client,
        &addr,
        &"0".repeat(64),
        &dir.path().join("x"),
        &|_, _| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransferError::Refused(_)), "{err}");

    // A node of another swarm gets nothing.
    let stranger = SwarmSecret::generate().unwrap().tls().unwrap();
    let dest = dir.path().join("got/stranger.gguf");
    let err = transfer::fetch(&stranger, &addr, &sha, &dest, &|_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransferError::Connect { .. } | TransferError::Broken { .. }
        ),
        "{err}"
    );
    assert!(!dest.exists());
}
