//! Bulk transfer of files between swarm members (issue 28, its first part): a node serves
//! the files it holds *by content hash* over the swarm's mutual TLS, on a listener of its
//! own beside the actor messages (a 40 GB model does not fit ractor frames, and must not
//! delay heartbeats); another member fetches one into a file of its own, in chunks that are
//! each verified, resuming from what it already has on disk, and checks the whole file's
//! hash at the end before it becomes visible under its name.
//!
//! On the wire (each message a u32 length, then the versioned envelope of
//! [`crate::format`] around bincode, format [`TRANSFER_FORMAT`]): the fetcher sends a
//! [`Fetch`] (the hash, and the offset it has, a multiple of [`CHUNK`]); the server answers
//! an [`Offer`] (the file's size) or why not, then streams chunks from the offset, each as
//! its length, the BLAKE3 digest of its bytes and the bytes. A chunk whose digest does not
//! match is fetched again (from a new connection, at most [`RETRIES`] times in a row). The server
//! sends at most `rate` bytes a second (a transfer must not starve running jobs).
//!
//! The file's identity stays the SHA-256 of its bytes (what `sha256sum` shows, and what
//! model sites publish): the fetcher keeps it on a thread of its own as verified chunks
//! arrive, so the network, the chunk digests and the whole file's hash overlap. Chunks are
//! checked with BLAKE3, several times SHA-256's speed, so checking each costs little beside
//! TLS (`myco bench transfer` measures both against a plain TLS copy).
//!
//! Only a holder of the swarm's secret can connect (the TLS ends both require a certificate
//! of the swarm's authority). No job, queue or actor here: the node wires it in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::secret::SwarmTls;
use super::wire::TransferView;
use crate::format;

/// The format of the transfer messages.
pub const TRANSFER_FORMAT: u16 = 4;
/// The bytes of a chunk (the last one of a file may be shorter): a manifest's.
pub const CHUNK: u64 = myco_jobs::model::identity::CHUNK;
/// How many times in a row a chunk that arrives damaged is fetched again before the fetch
/// fails.
pub const RETRIES: u32 = 3;
/// The most chunks a manifest may list (64 MiB of digests: files up to 2 TiB).
const MAX_MANIFEST: u64 = 2 << 20;
/// The largest message other than a chunk.
const MAX_MESSAGE: usize = 64 << 10;

/// The first message of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Send the file of this hash.
    Fetch(Fetch),
    /// Make (or find) the slice of layers `first..end` of the model of SHA-256 `source`,
    /// and say its own hash and size (answered with [`Offer::Slice`]); it is then fetched
    /// like any file.
    Slice {
        source: String,
        first: u32,
        end: u32,
    },
}

/// What a fetcher asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// The SHA-256 of the whole file, hex.
    pub sha256: String,
    /// Where to start: the bytes the fetcher has (a multiple of [`CHUNK`]).
    pub offset: u64,
}

/// The server's answer to a [`Fetch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Offer {
    /// The file, of `size` bytes: chunks follow from the offset asked. `bound`: their
    /// digests are the file's manifest, computed with its SHA-256, so a fetch that checks
    /// every chunk has the file of that hash without hashing it again.
    File { size: u64, bound: bool },
    /// Not served here (no such file, or an offset past its end).
    Refused(String),
    /// The slice asked for: its own SHA-256 and size.
    Slice { sha256: String, size: u64 },
}

/// A file a server serves, and its manifest if it has one
/// ([`myco_jobs::model::identity::Manifest`]).
#[derive(Debug, Clone)]
pub struct Served {
    pub path: PathBuf,
    pub manifest: Option<myco_jobs::model::identity::Manifest>,
}

/// The files a server serves: the file whose bytes hash to a SHA-256.
pub type Files = Arc<dyn Fn(&str) -> Option<Served> + Send + Sync>;

/// Makes the slice of layers `first..end` of the model of a SHA-256 this node holds: its
/// own SHA-256 and size, or why not. Called on a blocking thread.
pub type Slicer = Arc<dyn Fn(&str, u32, u32) -> Result<(String, u64), String> + Send + Sync>;

/// A server's settings.
#[derive(Clone)]
pub struct ServeOptions {
    /// Bytes a second for each transfer (`None`: as fast as it goes).
    pub rate: Option<u64>,
    /// Fault injection for tests: damage the bytes of this chunk index (once per server).
    pub corrupt_chunk: Option<u64>,
    /// Slices of the models it holds, for nodes that run a stage of one (`None`: none).
    pub slicer: Option<Slicer>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("cannot reach {addr}: {why}")]
    Connect { addr: String, why: String },
    #[error("the holder refused: {0}")]
    Refused(String),
    #[error("the transfer broke off after {received} bytes: {why}; fetch again to resume")]
    Broken { received: u64, why: String },
    #[error(
        "chunk {index} arrived damaged {RETRIES} times in a row; the holder's copy or the network is bad"
    )]
    Damaged { index: u64 },
    #[error(
        "the file fetched does not hash to {want} (it hashes to {got}): the holder's copy is not that model; it was removed"
    )]
    WrongFile { want: String, got: String },
    #[error(
        "cannot write {path}: {why} (a full disk?); what was fetched is kept, and the next fetch resumes"
    )]
    Disk { path: String, why: String },
}

/// Serve `files` on `listener` to swarm members until the task is dropped.
pub async fn serve(listener: TcpListener, tls: SwarmTls, files: Files, opts: ServeOptions) {
    let corrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let (tls, files, opts, corrupted) =
            (tls.clone(), files.clone(), opts.clone(), corrupted.clone());
        tokio::spawn(async move {
            // A stranger without the swarm's certificate ends here.
            let Ok(stream) = tls.acceptor.accept(tcp).await else {
                tracing::debug!(%peer, "a transfer connection without the swarm's certificate");
                return;
            };
            if let Err(e) = answer(stream, &files, &opts, &corrupted).await {
                tracing::debug!(%peer, error = %e, "a transfer ended early");
            }
        });
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    files: &Files,
    opts: &ServeOptions,
    corrupted: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()> {
    let fetch = match read_message::<_, Request>(&mut stream).await? {
        Request::Fetch(fetch) => fetch,
        Request::Slice { source, first, end } => {
            let answer = match opts.slicer.clone() {
                Some(slicer) => tokio::task::spawn_blocking(move || slicer(&source, first, end))
                    .await
                    .map_err(std::io::Error::other)?,
                None => Err("this node serves no slices".into()),
            };
            let offer = match answer {
                Ok((sha256, size)) => Offer::Slice { sha256, size },
                Err(why) => Offer::Refused(why),
            };
            return write_message(&mut stream, &offer).await;
        }
    };
    let served = files(&fetch.sha256);
    let file = served
        .as_ref()
        .and_then(|s| std::fs::File::open(&s.path).ok());
    let Some(file) = file else {
        let refused = Offer::Refused(format!("no file of sha256 {} here", fetch.sha256));
        return write_message(&mut stream, &refused).await;
    };
    let size = file.metadata()?.len();
    if fetch.offset > size || !fetch.offset.is_multiple_of(CHUNK) {
        let refused = Offer::Refused(format!(
            "offset {} is not a chunk boundary within the file's {size} bytes",
            fetch.offset
        ));
        return write_message(&mut stream, &refused).await;
    }
    let manifest = served
        .and_then(|s| s.manifest)
        .filter(|m| m.len() as u64 == size.div_ceil(CHUNK));
    let bound = manifest.is_some();
    write_message(&mut stream, &Offer::File { size, bound }).await?;
    if let Some(m) = &manifest {
        stream.write_u32(m.len() as u32).await?;
        stream.write_all(&m.concat()).await?;
    }
    // A thread reads and digests the next chunks while this task sends the one before.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<(Vec<u8>, blake3::Hash)>>(4);
    // Buffers come back once sent (no fresh pages for every chunk).
    let (give_back, taken) = std::sync::mpsc::channel::<Vec<u8>>();
    let offset = fetch.offset;
    std::thread::spawn(move || {
        use std::os::unix::fs::FileExt;
        let mut at = offset;
        while at < size {
            let mut buf = taken.try_recv().unwrap_or_default();
            buf.resize(usize::try_from((size - at).min(CHUNK)).unwrap_or(0), 0);
            let read = file.read_exact_at(&mut buf, at).map(|()| {
                // The manifest's digest (of the bytes when the file was identified), else
                // one of the bytes as read now.
                let digest = match &manifest {
                    Some(m) => blake3::Hash::from_bytes(m[(at / CHUNK) as usize]),
                    None => blake3::hash(&buf),
                };
                (buf, digest)
            });
            let failed = read.is_err();
            at += CHUNK;
            // The receiver gone: the connection ended.
            if tx.blocking_send(read).is_err() || failed {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut sent = 0u64;
    let mut at = offset;
    while let Some(read) = rx.recv().await {
        let (mut buf, digest) = read?;
        let index = at / CHUNK;
        if opts.corrupt_chunk == Some(index)
            && !corrupted.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            buf[0] ^= 0xFF;
        }
        let n = buf.len() as u64;
        stream.write_u32(n as u32).await?;
        stream.write_all(digest.as_bytes()).await?;
        stream.write_all(&buf).await?;
        let _ = give_back.send(buf);
        at += n;
        sent += n;
        if let Some(rate) = opts.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    if at != size {
        return Err(std::io::Error::other("the file's reader stopped early"));
    }
    stream.flush().await?;
    stream.shutdown().await
}

/// A fetch's outcome: the file in place, and the bytes that crossed the network for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    pub size: u64,
    /// Chunk bytes received (re-fetched chunks counted again).
    pub received: u64,
    /// The holder's manifest, every chunk checked against it (`None`: the holder had none,
    /// and the whole file was hashed instead).
    pub manifest: Option<myco_jobs::model::identity::Manifest>,
}

/// Fetch the file of `sha256` from the server at `addr` into `dest`. Bytes go to
/// `dest.part` first (kept when the fetch breaks off: the next fetch resumes from it);
/// `dest` appears only once the whole file hashes to `sha256`. `progress` is told the bytes
/// on disk and the size after each chunk.
pub async fn fetch(
    tls: &SwarmTls,
    addr: &str,
    sha256: &str,
    dest: &Path,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<Fetched, TransferError> {
    let part = part_path(dest);
    let disk = |e: std::io::Error| TransferError::Disk {
        path: part.display().to_string(),
        why: e.to_string(),
    };
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(disk)?;
    }
    let mut received = 0u64;
    let mut damaged_in_a_row = 0u32;
    // Opened at the holder's first answer: writes verified chunks on a thread of its own,
    // and hashes the whole file unless the holder's manifest vouches for every chunk.
    let mut sink: Option<Sink> = None;
    let finish = |sink: Option<Sink>| async move {
        match sink {
            Some(s) => s.finish().await,
            None => Ok(String::new()),
        }
    };
    let size = loop {
        match fetch_from(tls, addr, sha256, &part, &mut sink, &mut received, progress).await {
            Ok(size) => break size,
            Err(Step::Damaged(index)) => {
                damaged_in_a_row += 1;
                tracing::warn!(
                    chunk = index,
                    sha256,
                    "a chunk arrived damaged: fetching it again"
                );
                if damaged_in_a_row >= RETRIES {
                    let _ = finish(sink).await;
                    return Err(TransferError::Damaged { index });
                }
            }
            Err(Step::Failed(e)) => {
                // What was written stays for the next fetch, unless the disk failed too.
                return Err(match finish(sink).await {
                    Err(why) => TransferError::Disk {
                        path: part.display().to_string(),
                        why: why.to_string(),
                    },
                    Ok(_) => e,
                });
            }
        }
    };
    let manifest = sink.as_ref().and_then(|s| s.manifest.clone());
    let got = finish(sink).await.map_err(disk)?;
    if manifest.is_none() && got != sha256 {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(TransferError::WrongFile {
            want: sha256.to_owned(),
            got,
        });
    }
    tokio::fs::rename(&part, dest).await.map_err(disk)?;
    Ok(Fetched {
        path: dest.to_path_buf(),
        size,
        received,
        manifest,
    })
}

/// The partial file beside `dest`.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

enum Step {
    /// Chunk `index` did not match its hash (the file on disk ends before it).
    Damaged(u64),
    Failed(TransferError),
}

/// The partial file being written: a thread of its own hashes what was kept of it, then
/// appends the verified chunks it is handed and keeps the whole file's SHA-256 (so the disk
/// and the hash overlap the network), and syncs the file at the end.
struct Sink {
    /// The holder's manifest, when it vouches for the chunks (then nothing is hashed here).
    manifest: Option<myco_jobs::model::identity::Manifest>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Buffers written, for the next chunks.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: std::thread::JoinHandle<std::io::Result<String>>,
    /// The bytes of the file once the thread has written what it was handed.
    upto: u64,
}

impl Sink {
    /// `part`, keeping its first `have` bytes; `manifest`: they and every chunk to come
    /// were checked against it, so the whole file is not hashed.
    fn open(
        part: &Path,
        have: u64,
        manifest: Option<myco_jobs::model::identity::Manifest>,
    ) -> Sink {
        let hash = manifest.is_none();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let (give_back, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let part = part.to_path_buf();
        let thread = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(false)
                .open(&part)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; CHUNK as usize];
            let mut left = if hash { have } else { 0 };
            while left > 0 {
                let n = usize::try_from(left.min(CHUNK)).unwrap_or(0);
                file.read_exact(&mut buf[..n])?;
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            file.set_len(have)?;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(have))?;
            while let Some(bytes) = rx.blocking_recv() {
                file.write_all(&bytes)?;
                if hash {
                    hasher.update(&bytes);
                }
                let _ = give_back.send(bytes);
            }
            file.sync_all()?;
            Ok(myco_jobs::model::identity::hex(&hasher.finalize()))
        });
        Sink {
            manifest,
            tx,
            spare,
            thread,
            upto: have,
        }
    }

    /// Hand a verified chunk to the thread; false if it stopped (a disk error, which
    /// [`Sink::finish`] gives).
    async fn write(&mut self, bytes: Vec<u8>) -> bool {
        let n = bytes.len() as u64;
        let ok = self.tx.send(bytes).await.is_ok();
        if ok {
            self.upto += n;
        }
        ok
    }

    /// Wait for everything handed to be written and synced: the whole file's hash.
    /// A buffer of `n` bytes for the next chunk.
    fn buffer(&self, n: usize) -> Vec<u8> {
        let mut buf = self.spare.try_recv().unwrap_or_default();
        buf.resize(n, 0);
        buf
    }

    async fn finish(self) -> std::io::Result<String> {
        let Sink { tx, thread, .. } = self;
        drop(tx);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(std::io::Error::other)?
            .map_err(|_| std::io::Error::other("the writing thread panicked"))?
    }
}

/// One connection's worth of a fetch: from what `sink` has to the end, or to a damaged
/// chunk.
async fn fetch_from(
    tls: &SwarmTls,
    addr: &str,
    sha256: &str,
    part: &Path,
    sink: &mut Option<Sink>,
    received: &mut u64,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<u64, Step> {
    // What is on disk, cut to whole chunks: a fetch resumes from there.
    let have = match sink {
        Some(s) => s.upto,
        None => tokio::fs::metadata(part)
            .await
            .map_or(0, |m| m.len() - m.len() % CHUNK),
    };
    let mut stream = dial(tls, addr).await.map_err(Step::Failed)?;
    let broken = |received: u64, e: &dyn std::fmt::Display| {
        Step::Failed(TransferError::Broken {
            received,
            why: e.to_string(),
        })
    };
    write_message(
        &mut stream,
        &Request::Fetch(Fetch {
            sha256: sha256.to_owned(),
            offset: have,
        }),
    )
    .await
    .map_err(|e| broken(*received, &e))?;
    let size = match read_message::<_, Offer>(&mut stream)
        .await
        .map_err(|e| broken(*received, &e))?
    {
        Offer::File { size, bound } => (size, bound),
        Offer::Refused(why) => return Err(Step::Failed(TransferError::Refused(why))),
        Offer::Slice { .. } => return Err(broken(*received, &"an answer out of turn")),
    };
    let (size, bound) = size;
    // A bound offer: the manifest comes first, as raw digests.
    let manifest = if bound {
        let n = stream.read_u32().await.map_err(|e| broken(*received, &e))? as u64;
        // Bounded before anything is allocated for it: a holder may claim any size.
        if n != size.div_ceil(CHUNK) || n > MAX_MANIFEST {
            return Err(broken(
                *received,
                &format!("a manifest of {n} chunks for {size} bytes"),
            ));
        }
        let mut raw = vec![0u8; n as usize * 32];
        stream
            .read_exact(&mut raw)
            .await
            .map_err(|e| broken(*received, &e))?;
        Some(
            raw.chunks_exact(32)
                .map(|c| <[u8; 32]>::try_from(c).unwrap_or_default())
                .collect::<myco_jobs::model::identity::Manifest>(),
        )
    } else {
        None
    };
    match (sink.as_ref(), &manifest) {
        // The first answer: open the sink, checking what is kept against the manifest.
        (None, _) => {
            let kept = match &manifest {
                Some(m) => {
                    let (p, m2) = (part.to_path_buf(), m.clone());
                    tokio::task::spawn_blocking(move || good_prefix(&p, have, &m2))
                        .await
                        .unwrap_or(0)
                }
                None => have,
            };
            if kept != have {
                tracing::warn!(
                    kept,
                    have,
                    "a kept chunk does not match the manifest: fetching it again"
                );
                // Fetch again from there (the sink cuts the file to `kept`).
                *sink = Some(Sink::open(part, kept, manifest));
                return Err(Step::Damaged(kept / CHUNK));
            }
            *sink = Some(Sink::open(part, have, manifest.clone()));
        }
        // The same holder's word as before, or the whole file is hashed anyway.
        (Some(s), m) if s.manifest.is_none() || s.manifest.as_ref() == m.as_ref() => {}
        (Some(_), _) => {
            return Err(broken(
                *received,
                &"the holder's manifest changed; fetch again",
            ));
        }
    }
    let Some(sink) = sink.as_mut() else {
        return Err(broken(*received, &"no sink"));
    };
    let disk = || {
        Step::Failed(TransferError::Disk {
            path: part.display().to_string(),
            why: "the file stopped taking writes".into(),
        })
    };
    let mut at = have;
    while at < size {
        let n = u64::from(stream.read_u32().await.map_err(|e| broken(*received, &e))?);
        if n == 0 || n > CHUNK || n > size - at {
            return Err(broken(*received, &format!("a chunk of {n} bytes at {at}")));
        }
        let mut digest = [0u8; 32];
        stream
            .read_exact(&mut digest)
            .await
            .map_err(|e| broken(*received, &e))?;
        let mut chunk = sink.buffer(n as usize);
        stream
            .read_exact(&mut chunk)
            .await
            .map_err(|e| broken(*received, &e))?;
        *received += n;
        let want = match &manifest {
            Some(m) => m[(at / CHUNK) as usize],
            None => digest,
        };
        if blake3::hash(&chunk).as_bytes() != &want {
            return Err(Step::Damaged(at / CHUNK));
        }
        if !sink.write(chunk).await {
            return Err(disk());
        }
        at += n;
        progress(at, size);
    }
    Ok(size)
}

/// A connection to the transfer listener at `addr`, over the swarm's mutual TLS.
async fn dial(
    tls: &SwarmTls,
    addr: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TransferError> {
    let connect = |why: String| TransferError::Connect {
        addr: addr.to_owned(),
        why,
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| connect(e.to_string()))?;
    let name = SwarmTls::server_name().map_err(|e| connect(e.to_string()))?;
    tls.connector
        .connect(name, tcp)
        .await
        .map_err(|e| connect(format!("TLS: {e} (is this node of the same swarm?)")))
}

/// The bytes of the first `have` of `part` whose chunks match `manifest` (a prefix).
fn good_prefix(part: &Path, have: u64, manifest: &[[u8; 32]]) -> u64 {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(part) else {
        return 0;
    };
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0u64;
    while at < have {
        let n = (have - at).min(CHUNK) as usize;
        if f.read_exact(&mut buf[..n]).is_err()
            || manifest.get((at / CHUNK) as usize) != Some(blake3::hash(&buf[..n]).as_bytes())
        {
            return at;
        }
        at += n as u64;
    }
    at
}

/// Ask the server at `addr` for the slice of layers `first..end` of the model of SHA-256
/// `source`: the slice's own SHA-256 and size (then [`fetch`] it). The holder writes it
/// first if it has not yet (seconds for a large model).
pub async fn ask_slice(
    tls: &SwarmTls,
    addr: &str,
    source: &str,
    first: u32,
    end: u32,
) -> Result<(String, u64), TransferError> {
    let mut stream = dial(tls, addr).await?;
    let broken = |e: std::io::Error| TransferError::Broken {
        received: 0,
        why: e.to_string(),
    };
    let ask = Request::Slice {
        source: source.to_owned(),
        first,
        end,
    };
    write_message(&mut stream, &ask).await.map_err(broken)?;
    match read_message::<_, Offer>(&mut stream)
        .await
        .map_err(broken)?
    {
        Offer::Slice { sha256, size } => Ok((sha256, size)),
        Offer::Refused(why) => Err(TransferError::Refused(why)),
        Offer::File { .. } => Err(TransferError::Refused("an answer out of turn".into())),
    }
}

/// The transfers a node has in flight and the bytes it received, for its heartbeats and
/// its API. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<std::sync::Mutex<BoardState>>);

#[derive(Debug, Default)]
struct BoardState {
    next: u64,
    flying: std::collections::BTreeMap<u64, TransferView>,
    received: u64,
    cached: Vec<super::wire::CachedSlice>,
}

impl Board {
    /// A transfer starts: its id for [`Board::progress`] and [`Board::end`].
    pub fn begin(&self, view: TransferView) -> u64 {
        let Ok(mut b) = self.0.lock() else { return 0 };
        b.next += 1;
        let id = b.next;
        b.flying.insert(id, view);
        id
    }

    pub fn progress(&self, id: u64, done: u64, size: u64) {
        if let Ok(mut b) = self.0.lock()
            && let Some(t) = b.flying.get_mut(&id)
        {
            (t.done, t.size) = (done, size);
        }
    }

    /// It ended, with `received` bytes off the network.
    pub fn end(&self, id: u64, received: u64) {
        if let Ok(mut b) = self.0.lock() {
            b.flying.remove(&id);
            b.received += received;
        }
    }

    pub fn flying(&self) -> Vec<TransferView> {
        self.0
            .lock()
            .map(|b| b.flying.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn received(&self) -> u64 {
        self.0.lock().map_or(0, |b| b.received)
    }

    /// Read the model cache again (after it changed).
    pub fn rescan(&self, cache: &Path) {
        let now: Vec<super::wire::CachedSlice> = myco_jobs::model::cache::slices(cache)
            .into_iter()
            .map(|c| super::wire::CachedSlice {
                source: c.source,
                first: c.first,
                end: c.end,
                bytes: c.bytes,
            })
            .collect();
        if let Ok(mut b) = self.0.lock() {
            b.cached = now;
        }
    }

    pub fn cached(&self) -> Vec<super::wire::CachedSlice> {
        self.0.lock().map(|b| b.cached.clone()).unwrap_or_default()
    }
}

async fn write_message<S: AsyncWrite + Unpin, T: Serialize>(
    stream: &mut S,
    value: &T,
) -> std::io::Result<()> {
    let bytes = format::encode(TRANSFER_FORMAT, value).map_err(std::io::Error::other)?;
    stream.write_u32(bytes.len() as u32).await?;
    stream.write_all(&bytes).await?;
    stream.flush().await
}

async fn read_message<S: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    stream: &mut S,
) -> std::io::Result<T> {
    let len = stream.read_u32().await? as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::other(format!(
            "a message of {len} bytes is over the cap"
        )));
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await?;
    let (version, body) = format::split(&bytes);
    format::check(
        "a transfer message",
        version,
        TRANSFER_FORMAT,
        TRANSFER_FORMAT,
    )
    .map_err(std::io::Error::other)?;
    format::decode_body::<T, MAX_MESSAGE>("a transfer message", version, body)
        .map_err(std::io::Error::other)
}
