//! The one place myco calls llama.cpp and ggml directly (through `llama-cpp-sys-2`):
//! `llama-cpp-2` has no batch of hidden states (`llama_batch.embd`), no eval callback (both
//! of which a layer-range stage needs) and no device list. Everything here is wrapped in
//! safe types that own what they free; every `unsafe` block says why it holds.
//!
//! - [`Model`]: a loaded GGUF (a stage's slice).
//! - [`Context`]: a KV cache and a compute graph over a model. It takes hidden states
//!   (`n_tok × n_embd` f32) and either hands out the residual stream after its last layer
//!   (llama.cpp names that tensor `l_out-N`; the eval callback copies it out) or the logits.
//! - [`TypeInfo`], [`to_float`]: ggml's tensor types, for reading and dequantizing rows.
//! - [`devices`]: the compute devices this build of llama.cpp can use, with free memory.
//! - [`backends`]: ggml's backend modules, loaded at run time: the CPU kernels built for
//!   this CPU's extensions (of the variants the build compiled), and the GPU backends.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_void};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use llama_cpp_sys_2 as sys;

/// A ggml tensor type's block layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeInfo {
    /// Values per block.
    pub block: u64,
    /// Bytes per block.
    pub bytes: u64,
    pub name: &'static str,
}

/// The layout of ggml type `t`, or `None` for an id ggml does not know (or no longer
/// supports).
pub fn type_info(t: u32) -> Option<TypeInfo> {
    if t >= sys::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: `t` is below GGML_TYPE_COUNT, the length of ggml's static traits table, so the
    // returned pointer is to a static entry (never null, never freed).
    let traits = unsafe { sys::ggml_get_type_traits(t as sys::ggml_type).as_ref() }?;
    let block = u64::try_from(traits.blck_size).ok().filter(|&b| b > 0)?;
    let name = if traits.type_name.is_null() {
        "?"
    } else {
        // SAFETY: a non-null type name in the static table is a NUL-terminated static string.
        unsafe { CStr::from_ptr(traits.type_name) }
            .to_str()
            .unwrap_or("?")
    };
    Some(TypeInfo {
        block,
        bytes: traits.type_size as u64,
        name,
    })
}

/// Dequantize one row of `dst.len()` values of type `t` from `src` (ggml's own `to_float`,
/// the function its `get_rows` uses, so values are bit-identical to llama.cpp's embedding
/// lookup).
pub fn to_float(t: u32, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
    let info = type_info(t).ok_or_else(|| format!("unknown ggml type {t}"))?;
    let n = dst.len() as u64;
    if !n.is_multiple_of(info.block) || src.len() as u64 != n / info.block * info.bytes {
        return Err(format!(
            "{} bytes of {} are not {n} values",
            src.len(),
            info.name
        ));
    }
    if t == sys::GGML_TYPE_F32 {
        for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        }
        return Ok(());
    }
    // SAFETY: `t` was checked by type_info, so the table entry is valid.
    let traits = unsafe { &*sys::ggml_get_type_traits(t as sys::ggml_type) };
    let f = traits
        .to_float
        .ok_or_else(|| format!("ggml cannot dequantize {}", info.name))?;
    // SAFETY: `src` holds exactly n / block blocks of this type and `dst` n floats (checked
    // above); to_float reads and writes only those.
    unsafe { f(src.as_ptr().cast(), dst.as_mut_ptr(), n as i64) };
    Ok(())
}

/// A loaded model (a stage's slice GGUF).
#[derive(Debug)]
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    n_embd: usize,
    n_vocab: usize,
    placement: Placement,
}

// SAFETY: a llama_model is immutable once loaded; llama.cpp shares one model between
// contexts on different threads.
unsafe impl Send for Model {}
// SAFETY: as above: nothing mutates a loaded model.
unsafe impl Sync for Model {}

impl Model {
    /// Load the GGUF at `path`, `gpu_layers` of its layers on the GPU (0: CPU only).
    /// The backend must be up (`infer::engine::backend`).
    pub fn load(path: &Path, gpu_layers: u32) -> Result<Model, String> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{} has a NUL in its path", path.display()))?;
        // SAFETY: returns a plain struct of defaults.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.n_gpu_layers = i32::try_from(gpu_layers).unwrap_or(i32::MAX);
        // SAFETY: `c` is a valid NUL-terminated path for the call; params is by value.
        let (ptr, log) =
            capture_log(|| unsafe { sys::llama_model_load_from_file(c.as_ptr(), params) });
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| format!("llama.cpp could not load {}", path.display()))?;
        // SAFETY: ptr is a live model; these read its hyperparameters and vocabulary.
        let (n_embd, n_vocab) = unsafe {
            let vocab = sys::llama_model_get_vocab(ptr.as_ptr());
            (
                sys::llama_model_n_embd(ptr.as_ptr()),
                sys::llama_vocab_n_tokens(vocab),
            )
        };
        Ok(Model {
            ptr,
            n_embd: usize::try_from(n_embd).unwrap_or(0),
            n_vocab: usize::try_from(n_vocab).unwrap_or(0),
            placement: Placement::from_log(&log),
        })
    }

    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Where llama.cpp put it.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: the model was loaded by us, and every Context over it is gone (each holds
        // an Arc of it).
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

/// What the eval callback copies out: the residual stream after the stage's last layer.
#[derive(Debug)]
struct Capture {
    name: CString,
    data: Vec<f32>,
    error: Option<String>,
}

/// The eval callback: asked about every graph node, it wants only `l_out-N` and copies it.
unsafe extern "C" fn capture_cb(t: *mut sys::ggml_tensor, ask: bool, user: *mut c_void) -> bool {
    // SAFETY: `user` is the Capture boxed in the Context that set this callback; the box
    // lives as long as the context, and llama.cpp calls back only inside llama_decode on the
    // thread that holds `&mut Context`, so nothing else touches it meanwhile.
    let Some(cap) = (unsafe { user.cast::<Capture>().as_mut() }) else {
        return true;
    };
    // SAFETY: the scheduler passes a live tensor whose name is a NUL-terminated array.
    let Some(tensor) = (unsafe { t.as_ref() }) else {
        return true;
    };
    // SAFETY: as above.
    let name = unsafe { CStr::from_ptr(sys::ggml_get_name(tensor)) };
    if name != cap.name.as_c_str() {
        return !ask;
    }
    if ask {
        return true;
    }
    if tensor.type_ != sys::GGML_TYPE_F32 {
        cap.error = Some(format!("{name:?} is not f32"));
        return false;
    }
    // SAFETY: a live tensor.
    let n = usize::try_from(unsafe { sys::ggml_nelements(tensor) }).unwrap_or(0);
    let contiguous = tensor.nb[0] == 4 && tensor.nb[1] == 4 * tensor.ne[0] as usize;
    if !contiguous {
        cap.error = Some(format!("{name:?} is not contiguous"));
        return false;
    }
    // A decode of more rows than one compute step takes calls back once a step: the rows
    // follow on, in the batch's order.
    let at = cap.data.len();
    cap.data.resize(at + n, 0.0);
    // SAFETY: the tensor holds n contiguous f32 (checked); data has room for n f32 from
    // `at`; the backend copies from wherever the tensor lives (CPU or device memory).
    unsafe {
        sys::ggml_backend_tensor_get(tensor, cap.data[at..].as_mut_ptr().cast(), 0, n * 4);
    }
    true
}

/// Which positions of a batch produce output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    /// Every position (a stage before the last: its layers must keep every row).
    All,
    /// The last position's logits.
    Last,
    /// None (a prompt chunk before the last).
    None,
}

/// One sequence's KV cache and compute graph over a [`Model`].
#[derive(Debug)]
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    model: Arc<Model>,
    /// Owned through this pointer (a leaked Box, freed in Drop after the context), so its
    /// address stays put and no `&mut` of ours overlaps the callback's writes.
    capture: Option<NonNull<Capture>>,
}

// SAFETY: a llama_context may move between threads; it is used by one thread at a time
// (every method takes `&mut self` or reads results of the last decode).
unsafe impl Send for Context {}

/// Prompt tokens per compute step (llama.cpp's `n_ubatch`), in `infer` contexts and stage
/// contexts alike: both then split a prompt the same way and compute the same numbers.
pub const UBATCH: u32 = 512;

impl Context {
    /// A context of `n_ctx` positions for one sequence. `capture_layer`: hand out the output
    /// of that layer (the slice's last) instead of logits.
    pub fn new(
        model: &Arc<Model>,
        n_ctx: u32,
        threads: i32,
        capture_layer: Option<u32>,
    ) -> Result<Context, String> {
        Context::shared(model, n_ctx, 1, threads, capture_layer)
    }

    /// A context of up to `n_seq` sequences (ids `0..n_seq`) of `n_ctx / n_seq` positions
    /// each, decoded together by [`Context::decode_rows`]. Each sequence has a KV buffer of its
    /// own (llama.cpp's streams, not one buffer shared by all), so its cells are where a lone
    /// run's are and its numbers do not depend on the other sequences' cells; one compute step
    /// takes sequences of consecutive ids (llama.cpp splits a decode of others into several).
    pub fn shared(
        model: &Arc<Model>,
        n_ctx: u32,
        n_seq: u32,
        threads: i32,
        capture_layer: Option<u32>,
    ) -> Result<Context, String> {
        let capture = capture_layer.map(|l| {
            NonNull::from(Box::leak(Box::new(Capture {
                name: CString::new(format!("l_out-{l}")).unwrap_or_default(),
                data: Vec::new(),
                error: None,
            })))
        });
        let n_seq = n_seq.max(1);
        // SAFETY: returns a plain struct of defaults.
        let mut params = unsafe { sys::llama_context_default_params() };
        params.n_ctx = n_ctx;
        params.n_batch = n_ctx;
        params.n_ubatch = UBATCH.min(n_ctx);
        params.n_seq_max = n_seq;
        params.kv_unified = false;
        params.n_threads = threads;
        params.n_threads_batch = threads;
        if let Some(cap) = capture {
            params.cb_eval = Some(capture_cb);
            params.cb_eval_user_data = cap.as_ptr().cast();
        }
        // SAFETY: the model is live (the context holds an Arc of it); the callback's user
        // data is the Capture the context owns.
        let ptr = unsafe { sys::llama_init_from_model(model.ptr.as_ptr(), params) };
        let Some(ptr) = NonNull::new(ptr) else {
            if let Some(cap) = capture {
                // SAFETY: leaked above and never shared: no context was made.
                drop(unsafe { Box::from_raw(cap.as_ptr()) });
            }
            return Err("llama.cpp could not create a context".into());
        };
        Ok(Context {
            ptr,
            model: model.clone(),
            capture,
        })
    }

    /// The capture, between decodes.
    fn capture(&mut self) -> Option<&mut Capture> {
        // SAFETY: the Capture is ours (see the field) and llama.cpp writes it only inside
        // llama_decode, which runs under `&mut self` too: this borrow never overlaps it.
        self.capture.map(|p| unsafe { &mut *p.as_ptr() })
    }

    /// Forget every position.
    pub fn clear(&mut self) {
        // SAFETY: a live context; its memory handle lives as long as it does.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ptr.as_ptr()), true) }
    }

    /// Forget one sequence's positions.
    pub fn forget(&mut self, seq: i32) {
        // SAFETY: a live context; its memory handle lives as long as it does.
        unsafe {
            sys::llama_memory_seq_rm(sys::llama_get_memory(self.ptr.as_ptr()), seq, -1, -1);
        }
    }

    /// Run hidden states `embd` (`n × n_embd` f32, row-major) at positions `pos..pos+n` of
    /// sequence 0.
    pub fn decode(&mut self, pos: u32, embd: &[f32], outputs: Outputs) -> Result<(), String> {
        let n_embd = self.model.n_embd;
        if n_embd == 0 || embd.is_empty() || !embd.len().is_multiple_of(n_embd) {
            return Err(format!("{} values are not rows of {n_embd}", embd.len()));
        }
        let n = embd.len() / n_embd;
        let rows: Vec<Row> = (0..n)
            .map(|i| Row {
                seq: 0,
                pos: pos.saturating_add(i as u32),
                output: match outputs {
                    Outputs::All => true,
                    Outputs::Last => i + 1 == n,
                    Outputs::None => false,
                },
            })
            .collect();
        self.decode_rows(embd, &rows)
    }

    /// Run hidden states `embd` (one row of `n_embd` f32 per entry of `rows`, in that order)
    /// in one decode: each row at its sequence and position. A captured layer's output comes
    /// back in the same row order ([`Context::take_hidden`]); logits by row index
    /// ([`Context::logits_at`]).
    pub fn decode_rows(&mut self, embd: &[f32], rows: &[Row]) -> Result<(), String> {
        let n_embd = self.model.n_embd;
        let n = rows.len();
        if n_embd == 0 || n == 0 || embd.len() != n * n_embd {
            return Err(format!(
                "{} values are not {n} rows of {n_embd}",
                embd.len()
            ));
        }
        let n_i32 = i32::try_from(n).map_err(|_| "too many positions".to_owned())?;
        // SAFETY: allocates a batch for n rows of n_embd floats and one sequence id each;
        // freed below on every path.
        let mut batch = unsafe { sys::llama_batch_init(n_i32, n_embd as i32, 1) };
        // SAFETY: the batch's arrays have n entries (embd: n × n_embd), as allocated above.
        unsafe {
            std::ptr::copy_nonoverlapping(embd.as_ptr(), batch.embd, embd.len());
            for (i, r) in rows.iter().enumerate() {
                *batch.pos.add(i) = i32::try_from(r.pos).unwrap_or(i32::MAX);
                *batch.n_seq_id.add(i) = 1;
                **batch.seq_id.add(i) = r.seq;
                *batch.logits.add(i) = i8::from(r.output);
            }
        }
        batch.n_tokens = n_i32;
        if let Some(cap) = self.capture() {
            cap.data.clear();
            cap.error = None;
        }
        // SAFETY: a live context and a filled batch; the callback (if any) writes only into
        // our Capture, which nothing else borrows during the call.
        let rc = unsafe { sys::llama_decode(self.ptr.as_ptr(), batch) };
        // SAFETY: the batch came from llama_batch_init above.
        unsafe { sys::llama_batch_free(batch) };
        if let Some(e) = self.capture().and_then(|c| c.error.take()) {
            return Err(e);
        }
        match rc {
            0 => Ok(()),
            1 => Err("no room in the KV cache".into()),
            2 => Err("the decode was aborted".into()),
            rc => Err(format!("llama_decode failed ({rc})")),
        }
    }

    /// The output of the captured layer for the last decode (`n × n_embd` f32).
    pub fn take_hidden(&mut self) -> Result<Vec<f32>, String> {
        let cap = self
            .capture()
            .ok_or("this context hands out logits, not hidden states")?;
        if cap.data.is_empty() {
            return Err(format!("llama.cpp computed no {:?}", cap.name));
        }
        Ok(std::mem::take(&mut cap.data))
    }

    /// The logits of the last decode's last position.
    pub fn logits(&self) -> Result<&[f32], String> {
        self.logits_at(-1)
    }

    /// The logits of row `i` of the last decode (-1: its last output).
    pub fn logits_at(&self, i: i32) -> Result<&[f32], String> {
        // SAFETY: a live context. The pointer, if not null, is to n_vocab floats owned by the
        // context, valid until the next decode (`&self` keeps `&mut self` methods out for
        // the borrow's life); llama.cpp checks `i` and returns null when it is not an output.
        unsafe {
            let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), i);
            if p.is_null() {
                return Err(format!("the last decode produced no logits at row {i}"));
            }
            Ok(std::slice::from_raw_parts(p, self.model.n_vocab))
        }
    }
}

/// One row of a [`Context::decode_rows`] batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub seq: i32,
    pub pos: u32,
    /// Compute this row's output (logits, or the captured layer's row).
    pub output: bool,
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context was created by us and is freed once, before the Capture its
        // callback writes to.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
        if let Some(cap) = self.capture.take() {
            // SAFETY: leaked in `new`, freed only here, after the context that used it.
            drop(unsafe { Box::from_raw(cap.as_ptr()) });
        }
    }
}

/// What kind of device llama.cpp computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Gpu,
    /// A GPU sharing the host's memory (integrated).
    Igpu,
    /// An accelerator used beside the CPU (BLAS and the like).
    Accel,
}

/// A compute device of this build, as ggml's backend registry reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    /// ggml's name (`CPU`, `Vulkan0`, `CUDA0`, `MTL0`).
    pub name: String,
    pub description: String,
    pub kind: DeviceKind,
    /// Bytes free now (what the device reports; for the CPU, the host's).
    pub free: u64,
    pub total: u64,
}

/// The devices this build can compute on (the CPU always; GPUs in a `vulkan`, `cuda` or
/// `metal` build that finds one). Call it once the backend is up (`infer::engine::devices`
/// does).
pub fn devices() -> Vec<Device> {
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: ggml returns NUL-terminated strings owned by the device, which lives
            // for the whole process.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    // SAFETY: the registry is initialized with the backend; devices are never freed.
    let n = unsafe { sys::ggml_backend_dev_count() };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: i is below the count.
        let dev = unsafe { sys::ggml_backend_dev_get(i) };
        if dev.is_null() {
            continue;
        }
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: a live device; the out-pointers are to locals.
        let (name, description, kind) = unsafe {
            sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
            (
                text(sys::ggml_backend_dev_name(dev)),
                text(sys::ggml_backend_dev_description(dev)),
                sys::ggml_backend_dev_type(dev),
            )
        };
        let kind = match kind {
            sys::GGML_BACKEND_DEVICE_TYPE_GPU => DeviceKind::Gpu,
            sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceKind::Igpu,
            sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
            _ => DeviceKind::Accel,
        };
        out.push(Device {
            name,
            description,
            kind,
            free: free as u64,
            total: total as u64,
        });
    }
    out
}

/// ggml's backend modules as loaded in this process (see [`backends`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backends {
    /// The folder they were loaded from.
    pub dir: PathBuf,
    /// The CPU backend's variant, from its file name (`libggml-cpu-<variant>.so`: `x64`,
    /// `sse42`, `haswell`, `skylakex`, `zen4`, ...): the one whose extensions this CPU has
    /// and that scores best. `None` when no variant in `dir` runs here.
    pub cpu: Option<String>,
    /// Every module loaded: ggml's name for it (`CPU`, `Vulkan`) and its file.
    pub loaded: Vec<(String, PathBuf)>,
}

/// Where this build's backend modules are: the folder llama-cpp-sys-2 installed them in
/// (this very build's, so `cargo run` and tests never mix builds), else the executable's
/// own folder (a binary copied elsewhere with its libraries, which `jobs/build.rs` puts
/// beside it). Never the current directory, which ggml's default search also reads: a
/// library planted there would run inside the node.
fn backends_dir() -> PathBuf {
    if let Some(dir) = sys::BACKENDS_DIR.map(PathBuf::from)
        && dir.is_dir()
    {
        return dir;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

/// Load ggml's backend modules, once per process (ggml's registry is process-wide), before
/// llama.cpp's first use. ggml scores each CPU variant against this CPU's extensions and
/// loads the best that runs, so one binary runs on a 2008 CPU and uses AVX-512 where there
/// is one.
pub fn backends() -> &'static Backends {
    static BACKENDS: std::sync::OnceLock<Backends> = std::sync::OnceLock::new();
    BACKENDS.get_or_init(|| {
        install_log();
        let dir = backends_dir();
        let path = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
        let ((), log) = capture_log(|| {
            // SAFETY: a NUL-terminated path valid for the call; ggml copies what it keeps.
            unsafe { sys::ggml_backend_load_all_from_path(path.as_ptr()) }
        });
        Backends::from_log(dir, &log)
    })
}

impl Backends {
    /// Parse ggml's `loaded <name> backend from <path>` lines.
    fn from_log(dir: PathBuf, log: &str) -> Backends {
        let loaded: Vec<(String, PathBuf)> = log
            .lines()
            .filter_map(|line| {
                let rest = line.split("loaded ").nth(1)?;
                let (name, path) = rest.split_once(" backend from ")?;
                Some((name.to_owned(), PathBuf::from(path.trim())))
            })
            .collect();
        let cpu = loaded
            .iter()
            .find(|(name, _)| name == "CPU")
            .and_then(|(_, path)| path.file_stem()?.to_str().map(str::to_owned))
            .map(|stem| {
                let stem = stem.strip_prefix("lib").unwrap_or(&stem);
                let variant = stem.strip_prefix("ggml-cpu").unwrap_or(stem);
                match variant.trim_start_matches('-') {
                    "" => "default".to_owned(),
                    v => v.to_owned(),
                }
            });
        Backends { dir, cpu, loaded }
    }
}

thread_local! {
    /// Lines llama.cpp logs on this thread while [`capture_log`] runs.
    static CAPTURED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// llama.cpp's log: kept for [`capture_log`] on the thread that logs, printed to stderr only
/// when `MYCO_LLAMA_LOG` is set (otherwise llama.cpp is quiet, as before).
unsafe extern "C" fn log_cb(
    _level: sys::ggml_log_level,
    text: *const std::ffi::c_char,
    _: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated message valid for the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    CAPTURED.with(|c| {
        if let Some(buf) = c.borrow_mut().as_mut() {
            buf.push_str(&text);
        }
    });
    if std::env::var_os("MYCO_LLAMA_LOG").is_some() {
        eprint!("{text}");
    }
}

/// Route llama.cpp's log through [`log_cb`] (once the backend is up).
pub fn install_log() {
    // SAFETY: log_cb is a plain function valid for the whole process; no user data.
    unsafe { sys::llama_log_set(Some(log_cb), std::ptr::null_mut()) }
}

/// Run `f`, and return what llama.cpp logged on this thread meanwhile.
pub fn capture_log<R>(f: impl FnOnce() -> R) -> (R, String) {
    CAPTURED.with(|c| *c.borrow_mut() = Some(String::new()));
    let r = f();
    let text = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (r, text)
}

/// Where llama.cpp put a model, from its own load report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    /// Layers on a GPU, and of how many (`offloaded N/M layers to GPU`); None when the
    /// build has no GPU backend (llama.cpp does not report then).
    pub gpu_layers: Option<(u32, u32)>,
    /// Model bytes per buffer (`CPU_Mapped`, `Vulkan0`, ...).
    pub buffers: Vec<(String, u64)>,
}

impl Placement {
    /// Parse llama.cpp's load log.
    pub fn from_log(log: &str) -> Placement {
        let mut p = Placement::default();
        for line in log.lines() {
            if let Some(rest) = line.split("offloaded ").nth(1)
                && let Some((n, m)) = rest.split(" layers").next().and_then(|f| f.split_once('/'))
                && let (Ok(n), Ok(m)) = (n.trim().parse(), m.trim().parse())
            {
                p.gpu_layers = Some((n, m));
            }
            if let Some((name, size)) = line.split_once(" model buffer size =") {
                let name = name.rsplit(':').next().unwrap_or("").trim().to_owned();
                let mib: f64 = size
                    .trim()
                    .trim_end_matches("MiB")
                    .trim()
                    .parse()
                    .unwrap_or(0.0);
                p.buffers.push((name, (mib * 1024.0 * 1024.0) as u64));
            }
        }
        p
    }

    /// Model bytes in buffers that are not the host's.
    pub fn device_bytes(&self) -> u64 {
        self.buffers
            .iter()
            .filter(|(n, _)| !n.starts_with("CPU"))
            .map(|(_, b)| b)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_variant_is_read_from_the_module_ggml_loaded() {
        let log = "ggml_backend_load_best: search path /x does not exist\n\
                   load_backend: loaded Vulkan backend from /b/libggml-vulkan.so\n\
                   load_backend: loaded CPU backend from /b/libggml-cpu-skylakex.so\n";
        let b = Backends::from_log(PathBuf::from("/b"), log);
        assert_eq!(b.cpu.as_deref(), Some("skylakex"));
        assert_eq!(b.loaded.len(), 2);
        assert_eq!(b.loaded[0].0, "Vulkan");
        let none = Backends::from_log(PathBuf::from("/b"), "nothing here\n");
        assert_eq!(none.cpu, None);
    }
}
