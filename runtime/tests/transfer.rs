//! Bulk transfer between two TLS ends of one swarm on loopback: a whole file fetched by its
//! hash, a fetch cut off and resumed from what is on disk, a damaged chunk fetched again, a
//! stranger (another swarm's secret) refused; each from a holder without a manifest (the
//! fetch hashes the whole file) and from one with it (every chunk checked against it; a
//! holder whose copy rotted since is caught).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use myco_jobs::model::identity::Manifest;
use myco_runtime::cluster::secret::SwarmSecret;
use myco_runtime::cluster::transfer::{
    self, CHUNK, Files, ServeOptions, Served, TransferError, part_path,
};

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

/// The file's manifest, as a holder computes it when it identifies the file.
fn manifest_of(bytes: &[u8]) -> Manifest {
    bytes
        .chunks(CHUNK as usize)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect()
}

thread_local! {
    /// The manifest the next servers of this test give (`None`: they have none).
    static MANIFEST: std::cell::RefCell<Option<Manifest>> = const { std::cell::RefCell::new(None) };
}

/// A server of `path` (as `sha`) on 127.0.0.1; its address.
async fn server(secret: &SwarmSecret, path: PathBuf, sha: String, opts: ServeOptions) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let manifest = MANIFEST.with(|m| m.borrow().clone());
    let files: Files = Arc::new(move |h: &str| {
        (h == sha).then(|| Served {
            path: path.clone(),
            manifest: manifest.clone(),
        })
    });
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

#[tokio::test(flavor = "current_thread")]
async fn a_file_travels_whole_resumes_after_a_cut_and_a_damaged_chunk_is_fetched_again() {
    scenario(false).await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_same_from_a_holder_with_a_manifest_and_a_rotted_copy_is_caught() {
    let dir = scenario(true).await;
    // The holder's file changed after it was identified (one byte of chunk 3 rotted): the
    // manifest still says what it was, so that chunk never passes.
    let (path, sha, mut bytes) = model(dir.path(), 6);
    MANIFEST.with(|m| *m.borrow_mut() = Some(manifest_of(&bytes)));
    bytes[3 * CHUNK as usize + 7] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let secret = SwarmSecret::generate().unwrap();
    let addr = server(&secret, path, sha.clone(), plain()).await;
    let dest = dir.path().join("got/rotted.gguf");
    let err = transfer::fetch(&secret.tls().unwrap(), &addr, &sha, &dest, &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Damaged { index: 3 }), "{err}");
    assert!(!dest.exists());
}

async fn scenario(bound: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (path, sha, bytes) = model(dir.path(), 6);
    MANIFEST.with(|m| *m.borrow_mut() = bound.then(|| manifest_of(&bytes)));
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
    assert!(std::fs::read(&dest).unwrap() == bytes, "the same bytes");
    assert!(!part_path(&dest).exists());
    assert_eq!(
        got.manifest.is_some(),
        bound,
        "the holder's manifest comes with it"
    );

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
    assert!(std::fs::read(&dest).unwrap() == bytes, "the same bytes");
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
    assert!(std::fs::read(&dest).unwrap() == bytes, "the same bytes");
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
    dir
}
