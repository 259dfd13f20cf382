//! Models that travel, as a node uses them: where a model's bytes are in the swarm (the
//! holders, by content hash), and fetching the slice of a stage this node is asked to run
//! of a model it does not hold, into its model cache ([`myco_jobs::model::cache`]) under its
//! size cap, with the transfer on the node's board (heartbeats, `myco models`, the
//! dashboard). The bytes move in [`myco_runtime::cluster::transfer`].

use std::path::{Path, PathBuf};

use myco_jobs::model::cache;
use myco_runtime::cluster::secret::SwarmTls;
use myco_runtime::cluster::transfer::{self, Board};
use myco_runtime::cluster::wire::TransferView;

use crate::swarm::view::Swarm;

/// What a node needs to fetch models and slices from its peers. Cheap to clone.
#[derive(Clone)]
pub struct Travel {
    pub board: Board,
    /// The client end of the swarm's mutual TLS (`None` outside a swarm).
    pub tls: Option<SwarmTls>,
    /// The home's `cache/`.
    pub cache: PathBuf,
    /// The model cache's cap in bytes.
    pub cap: u64,
    pub swarm: Option<Swarm>,
}

impl std::fmt::Debug for Travel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Travel")
            .field("cache", &self.cache)
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

/// A model fetched from a peer ([`Travel::pull`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PulledModel {
    pub model: String,
    /// The node it came from.
    pub from: String,
    pub sha256: String,
    pub bytes: u64,
    /// Bytes that crossed the network (a damaged chunk counts twice).
    pub received: u64,
    pub seconds: f64,
}

/// What [`Travel::remove`] removed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RemovedModel {
    pub model: String,
    /// Its file in the models folder.
    pub file: bool,
    /// Slices of it in the model cache.
    pub slices: u32,
    pub bytes: u64,
    /// Slices kept because a loaded stage uses them (unloaded a minute after its last run).
    pub kept: u32,
}

impl Travel {
    /// Remove the model `name` from this node: its file in `models` and every slice of it
    /// (by its content hash) in the cache, except those a loaded stage uses (`in_use`).
    /// `None` if the node has neither.
    pub fn remove(
        &self,
        models: &Path,
        name: &str,
        in_use: &dyn Fn(&Path) -> bool,
    ) -> Option<RemovedModel> {
        let bare = name.strip_suffix(".gguf").unwrap_or(name);
        let path = models.join(format!("{bare}.gguf"));
        // Its hash: remembered for the file, or named by the swarm.
        let sha = myco_jobs::model::identity::known(&path, &self.cache).or_else(|| {
            self.swarm.as_ref().and_then(|s| {
                s.view()
                    .members()
                    .into_iter()
                    .filter_map(|m| m.info)
                    .flat_map(|i| i.models)
                    .find(|f| f.name == bare)
                    .and_then(|f| f.sha256)
            })
        });
        let mut removed = RemovedModel {
            model: bare.to_owned(),
            file: false,
            slices: 0,
            bytes: 0,
            kept: 0,
        };
        if let Ok(meta) = std::fs::metadata(&path) {
            // Forgotten first: its record is keyed by the path as it resolves now.
            myco_jobs::model::identity::forget(&path, &self.cache);
            if std::fs::remove_file(&path).is_ok() {
                removed.file = true;
                removed.bytes += meta.len();
            }
        }
        let _ = std::fs::remove_file(transfer::part_path(&path));
        for c in cache::slices(&self.cache) {
            if Some(&c.source) != sha.as_ref() {
                continue;
            }
            if in_use(&c.path) {
                removed.kept += 1;
            } else {
                cache::remove(&c.path);
                removed.slices += 1;
                removed.bytes += c.bytes;
            }
        }
        self.board.rescan(&self.cache);
        (removed.file || removed.slices > 0 || removed.kept > 0).then_some(removed)
    }

    /// Fetch the model `name` (a GGUF file's name, with or without `.gguf`) from a peer
    /// that holds it (`from`, or the first that does) into `models` (the node's models
    /// folder), verified, resumable; its identity is remembered (it is not read again).
    pub async fn pull(
        &self,
        models: &Path,
        name: &str,
        from: Option<&str>,
    ) -> Result<PulledModel, String> {
        let Some(tls) = &self.tls else {
            return Err("this node is in no swarm: there is no peer to fetch from".into());
        };
        let bare = name.strip_suffix(".gguf").unwrap_or(name);
        let dest = models.join(format!("{bare}.gguf"));
        if dest.exists() {
            return Err(format!(
                "this node holds `{bare}` already ({}); remove it first to fetch it again",
                dest.display()
            ));
        }
        let members = self
            .swarm
            .as_ref()
            .map(|s| s.view().members())
            .unwrap_or_default();
        let holder = members
            .into_iter()
            .filter(|m| m.status == "up" && from.is_none_or(|f| m.name == f))
            .find_map(|m| {
                let info = m.info?;
                let model = info.models.iter().find(|f| {
                    f.name == bare && f.format == myco_runtime::models::ModelFormat::Gguf
                })?;
                let sha = model.sha256.clone()?;
                Some((m.name, transfer_addr(&info)?, sha, model.size_bytes))
            })
            .ok_or_else(|| match from {
                Some(f) => format!(
                    "node `{f}` is not up, or holds no `{bare}` it has read and serves (myco models lists what each node holds)"
                ),
                None => format!(
                    "no node that is up holds a `{bare}` it has read and serves (myco models lists what each node holds; a node reads a new model within seconds)"
                ),
            })?;
        let (node, addr, sha, size) = holder;
        let started = std::time::Instant::now();
        let view = TransferView {
            what: format!("model {bare}"),
            sha256: sha.clone(),
            from: node.clone(),
            done: 0,
            size,
        };
        let fetched = self
            .fetch_shown(tls, &addr, view, &dest)
            .await
            .map_err(|e| format!("fetching `{bare}` from {node}: {e}"))?;
        // Its identity is known: no need to read it again.
        remember(&dest, &self.cache, &sha, fetched.manifest.as_deref()).await;
        Ok(PulledModel {
            model: bare.to_owned(),
            from: node,
            sha256: sha,
            bytes: fetched.size,
            received: fetched.received,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The nodes up that hold the model of `sha256` and serve transfers: (name, transfer
    /// address), `prefer` first.
    pub fn holders(&self, sha256: &str, prefer: Option<&str>) -> Vec<(String, String)> {
        let Some(swarm) = &self.swarm else {
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = swarm
            .view()
            .members()
            .into_iter()
            .filter(|m| m.status == "up")
            .filter_map(|m| {
                let info = m.info?;
                info.models
                    .iter()
                    .any(|f| f.sha256.as_deref() == Some(sha256))
                    .then_some(())?;
                Some((m.name, transfer_addr(&info)?))
            })
            .collect();
        out.sort_by_key(|(n, _)| Some(n.as_str()) != prefer);
        out
    }

    /// The slice of layers `first..end` of the model of `source` (named `model` in what is
    /// shown): from the cache, or fetched from a holder (`prefer` first, then the others)
    /// into it. `in_use`: the cache slices loaded stages hold (never removed to make room).
    pub async fn slice(
        &self,
        model: &str,
        source: &str,
        first: u32,
        end: u32,
        prefer: Option<&str>,
        in_use: &(dyn Fn(&Path) -> bool + Send + Sync),
    ) -> Result<PathBuf, String> {
        let path = cache::slice_path(&self.cache, source, first, end);
        if cache::cached(&path).is_some() {
            cache::touch(&path);
            return Ok(path);
        }
        let Some(tls) = &self.tls else {
            return Err("this node is in no swarm: there is no holder to fetch from".into());
        };
        let holders = self.holders(source, prefer);
        if holders.is_empty() {
            return Err(format!(
                "no node that is up holds {model} (sha256 {}) and serves transfers",
                &source[..16.min(source.len())]
            ));
        }
        let mut why = Vec::new();
        for (node, addr) in holders {
            match self
                .fetch_slice(tls, &node, &addr, model, source, first, end, &path, in_use)
                .await
            {
                Ok(()) => return Ok(path),
                Err(e) => {
                    tracing::warn!(%node, model, first, end, error = %e, "fetching a slice");
                    why.push(format!("from {node}: {e}"));
                }
            }
        }
        Err(format!(
            "cannot fetch layers {first}..{end} of {model}: {}",
            why.join("; ")
        ))
    }

    /// [`transfer::fetch`] of `view.sha256` into `dest`, shown on the board while it runs
    /// (from what an earlier fetch kept), with the bytes it received counted.
    async fn fetch_shown(
        &self,
        tls: &SwarmTls,
        addr: &str,
        mut view: TransferView,
        dest: &Path,
    ) -> Result<transfer::Fetched, transfer::TransferError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let kept = std::fs::metadata(transfer::part_path(dest))
            .map_or(0, |m| m.len() - m.len() % transfer::CHUNK);
        view.done = kept;
        let sha = view.sha256.clone();
        let id = self.board.begin(view);
        let (last, received) = (AtomicU64::new(kept), AtomicU64::new(0));
        let progress = |done: u64, size: u64| {
            let before = last.swap(done, Ordering::Relaxed);
            received.fetch_add(done.saturating_sub(before), Ordering::Relaxed);
            self.board.progress(id, done, size);
        };
        let fetched = transfer::fetch(tls, addr, &sha, dest, &progress).await;
        self.board.end(id, received.load(Ordering::Relaxed));
        fetched
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_slice(
        &self,
        tls: &SwarmTls,
        node: &str,
        addr: &str,
        model: &str,
        source: &str,
        first: u32,
        end: u32,
        path: &Path,
        in_use: &(dyn Fn(&Path) -> bool + Send + Sync),
    ) -> Result<(), String> {
        let (sha, size) = transfer::ask_slice(tls, addr, source, first, end)
            .await
            .map_err(|e| e.to_string())?;
        // Room for it, least recently used first.
        let removed = cache::trim(&self.cache, self.cap, size, in_use);
        for r in &removed {
            tracing::info!(slice = %r.path.display(), bytes = r.bytes, "removed from the model cache (least recently used)");
        }
        let view = TransferView {
            what: format!("layers {first}..{end} of {model}"),
            sha256: sha.clone(),
            from: node.to_owned(),
            done: 0,
            size,
        };
        let fetched = self
            .fetch_shown(tls, addr, view, path)
            .await
            .map_err(|e| e.to_string())?;
        cache::remember(path, &sha).map_err(|e| format!("{}: {e}", path.display()))?;
        remember(path, &self.cache, &sha, fetched.manifest.as_deref()).await;
        self.board.rescan(&self.cache);
        tracing::info!(
            model,
            first,
            end,
            from = node,
            bytes = fetched.size,
            received = fetched.received,
            "slice fetched into the model cache"
        );
        Ok(())
    }
}

/// Remember a fetched file's identity, with the manifest its chunks were checked against
/// (so this node serves it on with the same guarantee). Without one (the holder had none,
/// and the fetch hashed the whole file), the background identifier reads it once more for
/// its manifest.
async fn remember(path: &Path, cache: &Path, sha: &str, manifest: Option<&[[u8; 32]]>) {
    let (path, cache, sha) = (path.to_path_buf(), cache.to_path_buf(), sha.to_owned());
    let manifest = manifest.map(<[[u8; 32]]>::to_vec);
    let done = tokio::task::spawn_blocking(move || {
        use myco_jobs::model::identity;
        match manifest {
            Some(m) => identity::remember_with(&path, &cache, &sha, &m),
            None => identity::remember(&path, &cache, &sha),
        }
    })
    .await;
    if let Ok(Err(e)) = done {
        tracing::warn!(error = %e, "cannot remember a fetched file's identity");
    }
}

/// Where a node serves transfers: its cluster host, its transfer port.
fn transfer_addr(info: &myco_runtime::cluster::wire::NodeInfo) -> Option<String> {
    let host = info.cluster_addr.rsplit_once(':')?.0;
    Some(format!("{host}:{}", info.transfer_port?))
}
