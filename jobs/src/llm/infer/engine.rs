//! The llama.cpp engine (through `llama-cpp-2`): a whole GGUF model on one node.
//!
//! [`LlmModel`] owns a loaded model; [`LlmModel::generate`] runs one request alone in a context
//! of its own, calling `on_token` with each piece of text as it is decoded and polling
//! `cancelled` between tokens. A node runs requests through its cache of models instead
//! ([`super::models`]), in each model's shared batch ([`super::batch`]). Everything is
//! synchronous: callers keep models on an executor thread, never inside an actor's handler.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::types::{Finish, Generation, InferError, InferParams, Prompt, TokenLogprob, TopLogprob};
use crate::llm::{template, tools};

/// The process's llama.cpp backend: one per process, made on first use, logs off unless
/// `MYCO_LLAMA_LOG` is set. Static on purpose: `llama_backend_init` is process-wide, so this
/// is not node state (loaded models are: see [`Models`]).
pub fn backend() -> Result<&'static LlamaBackend, InferError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // The CPU kernels first: without a variant that runs on this CPU there is no
            // llama.cpp here (and the node must not die trying).
            cpu_kernels()?;
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| InferError::Engine(e.clone()))
}

pub use crate::llm::ffi::UBATCH;

/// The CPU kernels ggml chose for this CPU (the variant of its CPU backend: `sse42` on a
/// 2008 CPU, `haswell` with AVX2, `skylakex` or `zen4` with AVX-512), loaded at run time
/// from the modules the build compiled. Err when none of them runs here, which on x86_64
/// cannot happen (the `x64` variant needs only SSE2) unless the modules are missing: then
/// the node neither leases nor steals LLM jobs instead of failing each one.
pub fn cpu_kernels() -> Result<&'static str, String> {
    let b = crate::llm::ffi::backends();
    b.cpu.as_deref().ok_or_else(|| {
        format!(
            "no CPU kernels of llama.cpp load on this machine (looked for libggml-cpu-*.so in {}): LLM jobs (infer, pipeline) cannot run on this node; reinstall myco with its libraries beside the binary",
            b.dir.display()
        )
    })
}

/// The compute devices this build of llama.cpp can use (the CPU, and GPUs of a GPU build),
/// with their free memory now.
pub fn devices() -> Vec<crate::llm::ffi::Device> {
    match backend() {
        Ok(_) => crate::llm::ffi::devices(),
        Err(_) => Vec::new(),
    }
}

/// A loaded GGUF model.
pub struct LlmModel {
    model: LlamaModel,
    path: PathBuf,
    placement: crate::llm::ffi::Placement,
}

impl std::fmt::Debug for LlmModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmModel")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// llama.cpp's built-in chat template for a model of `architecture` whose GGUF has none:
/// Qwen's ChatML, Gemma's turns, Llama 3's headers (the architecture's namesake; a Mistral
/// or SmolLM file without a template names its own in `NAME.toml`), Phi 3's.
pub fn builtin_template(architecture: &str) -> Option<&'static str> {
    Some(match architecture {
        "qwen2" | "qwen2moe" | "qwen3" | "qwen3moe" => "chatml",
        "gemma" | "gemma2" | "gemma3" => "gemma",
        "llama" => "llama3",
        "phi3" => "phi3",
        _ => return None,
    })
}

/// The `chat_template` of the model's side file (`NAME.toml` beside `NAME.gguf`), if there
/// is one.
fn side_template(model: &Path) -> Result<Option<String>, String> {
    let side = model.with_extension("toml");
    let text = match std::fs::read_to_string(&side) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", side.display())),
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Side {
        chat_template: Option<String>,
    }
    let side_file: Side = toml::from_str(&text).map_err(|e| {
        format!(
            "{} is not a model's settings file: {e}; it may hold chat_template = \"chatml\" (a llama.cpp template name or a template text)",
            side.display()
        )
    })?;
    Ok(side_file.chat_template)
}

/// Threads for llama.cpp: `n`, or every core for 0.
pub fn threads(n: u32) -> i32 {
    let n = if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    } else {
        n
    };
    i32::try_from(n).unwrap_or(1)
}

impl LlmModel {
    /// Load the model at `path`, every layer on the GPU when the build has one.
    pub fn load(path: &Path) -> Result<LlmModel, InferError> {
        LlmModel::load_with(path, None)
    }

    /// Load the model at `path` with `gpu_layers` of its layers on the GPU (None: all, 0:
    /// none; a build without a GPU backend has none).
    pub fn load_with(path: &Path, gpu_layers: Option<u32>) -> Result<LlmModel, InferError> {
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(InferError::Missing { path: shown });
        }
        // llama.cpp rejects a file that is not GGUF with a null result and a log line: check
        // the magic first so the common mistake gets a precise message.
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
        if read.is_err() || &magic != b"GGUF" {
            return Err(InferError::Corrupt { path: shown });
        }
        let backend = backend()?;
        let mut params = LlamaModelParams::default();
        if let Some(n) = gpu_layers {
            params = params.with_n_gpu_layers(n);
        }
        let (model, log) =
            crate::llm::ffi::capture_log(|| LlamaModel::load_from_file(backend, path, &params));
        let model = model.map_err(|_| InferError::Corrupt { path: shown })?;
        Ok(LlmModel {
            model,
            path: path.to_path_buf(),
            placement: crate::llm::ffi::Placement::from_log(&log),
        })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The llama-cpp-2 model.
    pub fn llama(&self) -> &LlamaModel {
        &self.model
    }

    /// Where llama.cpp put the model (GPU layers, buffers), from its load report.
    pub fn placement(&self) -> &crate::llm::ffi::Placement {
        &self.placement
    }

    /// The tokenizer of the model at `path` only (no weights): for pipeline jobs, whose
    /// weights live in stages.
    pub fn load_vocab(path: &Path) -> Result<LlmModel, InferError> {
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(InferError::Missing { path: shown });
        }
        let backend = backend()?;
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|_| InferError::Corrupt { path: shown })?;
        Ok(LlmModel {
            model,
            path: path.to_path_buf(),
            placement: crate::llm::ffi::Placement::default(),
        })
    }

    /// Whether `token` ends generation (end of turn, end of text).
    pub fn is_eog(&self, token: i32) -> bool {
        self.model.vocab().is_eog(LlamaToken(token))
    }

    /// The end-of-generation tokens of the vocabulary.
    pub fn eog_tokens(&self) -> Vec<u32> {
        (0..self.model.n_vocab())
            .filter(|&t| self.is_eog(t))
            .filter_map(|t| u32::try_from(t).ok())
            .collect()
    }

    /// The bytes of a token's text.
    pub fn piece(&self, token: i32, out: &mut Vec<u8>) {
        out.clear();
        self.model
            .vocab()
            .token_to_piece_into(LlamaToken(token), out, false, None);
    }

    /// The prompt as text: chat messages go through a chat template, the first of: `asked`
    /// (the request's `chat_template`), the model's side file (`NAME.toml` beside
    /// `NAME.gguf`, with `chat_template = "..."`), the GGUF's own, and llama.cpp's built-in
    /// template for the model's architecture ([`builtin_template`]). A template is a Jinja
    /// text, rendered as Hugging Face renders it ([`crate::llm::template`]), or the name of
    /// one of llama.cpp's (`chatml`, `llama3`, `gemma`, `mistral-v7`, `phi3`, ...). A Jinja
    /// text our engine cannot parse goes to llama.cpp, which knows common templates by their
    /// marks; a template that refuses the conversation (`raise_exception`) is an error.
    pub fn render(&self, prompt: &Prompt, asked: Option<&str>) -> Result<String, InferError> {
        Ok(self.render_for(prompt, asked)?.0)
    }

    /// [`LlmModel::render`], and the plan for the request's tool calls (their format is the
    /// template's; a template that knows no tools gets them described in a system turn).
    pub fn render_for(
        &self,
        prompt: &Prompt,
        asked: Option<&str>,
    ) -> Result<(String, Option<tools::Plan>), InferError> {
        let path = self.path.display().to_string();
        let template_err = |why: String| InferError::Template {
            path: path.clone(),
            why,
        };
        let tools_asked = prompt
            .tools()
            .filter(|t| t.choice != crate::llm::infer::ToolChoice::None);
        let messages = match prompt.base() {
            Prompt::Text(t) => {
                if tools_asked.is_some() {
                    return Err(InferError::Tools(
                        "tools need chat messages, not a plain prompt".into(),
                    ));
                }
                return Ok((t.clone(), None));
            }
            Prompt::Chat(m) => serde_json::to_string(m).map_err(|e| template_err(e.to_string()))?,
            Prompt::Turns(json) => json.clone(),
            Prompt::With(..) => unreachable!("Prompt::base is never With"),
        };
        let named = match asked {
            Some(t) => Some(t.to_owned()),
            None => side_template(&self.path).map_err(template_err)?,
        };
        let own = match named {
            Some(t) => Some(t),
            None => self
                .model
                .chat_template(None)
                .ok()
                .and_then(|t| t.to_string().ok()),
        };
        let jinja = own
            .as_deref()
            .filter(|t| template::is_jinja(t))
            .and_then(|source| match template::ChatTemplate::new(source) {
                Ok(t) => Some((t, source)),
                Err(why) => {
                    tracing::warn!(
                        model = %path,
                        "the chat template does not parse as Jinja ({why}); llama.cpp renders it"
                    );
                    None
                }
            });
        let format = tools::Format::of_template(jinja.as_ref().map(|(_, s)| *s));
        let plan = match tools_asked {
            Some(t) => tools::Plan::new(format, t)
                .map_err(|(at, why)| InferError::Tools(format!("{at}: {why}")))?,
            None => None,
        };
        // A template that knows no tools: they are described in a system turn, and earlier
        // calls and results are shown as the JSON the model is asked to write.
        let generic = plan
            .as_ref()
            .is_some_and(|p| p.format == tools::Format::Generic);
        let messages = match (generic, tools_asked) {
            (true, Some(t)) => {
                tools::generic_messages(&messages, &t.json, &t.choice).map_err(InferError::Tools)?
            }
            _ => messages,
        };
        if let Some((t, _)) = &jinja {
            let shown = tools_asked.filter(|_| !generic).map(|t| t.json.as_str());
            let text = self
                .render_jinja(t, &messages, shown)
                .map_err(template_err)?;
            return Ok((text, plan));
        }
        let template = match own {
            Some(t) => LlamaChatTemplate::new(&t).map_err(|e| template_err(e.to_string()))?,
            None => {
                let arch = self
                    .model
                    .meta_val_str("general.architecture")
                    .unwrap_or_default();
                let name = builtin_template(&arch)
                    .ok_or_else(|| InferError::NoChatTemplate { path: path.clone() })?;
                LlamaChatTemplate::new(name).map_err(|e| template_err(e.to_string()))?
            }
        };
        let chat = tools::plain_messages(&messages)
            .map_err(|why| template_err(format!("{why}; tool turns need a Jinja chat template (the model's own, or chat_template)")))?
            .into_iter()
            .map(|(role, content)| LlamaChatMessage::new(role, content))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| template_err(e.to_string()))?;
        let name = template
            .to_str()
            .unwrap_or("")
            .chars()
            .take(40)
            .collect::<String>();
        let text = self
            .model
            .apply_chat_template(&template, &chat, true)
            .map_err(|e| template_err(format!("`{name}`: {e}")))?;
        Ok((text, plan))
    }

    /// `messages` (JSON) through a Jinja chat template, with `tools` (JSON) and this
    /// vocabulary's BOS and EOS texts. A BOS the template writes first is left out when
    /// tokenizing adds one (as llama.cpp's server does), so the prompt has one BOS, not two.
    fn render_jinja(
        &self,
        template: &template::ChatTemplate,
        messages: &str,
        tools: Option<&str>,
    ) -> Result<String, String> {
        let vocab = self.model.vocab();
        let text = |t: LlamaToken| {
            vocab
                .text(t)
                .and_then(|c| c.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (bos, eos) = (text(vocab.bos()), text(vocab.eos()));
        let out = template.render(&template::ChatInput {
            messages,
            tools,
            add_generation_prompt: true,
            bos_token: &bos,
            eos_token: &eos,
            now: std::time::SystemTime::now(),
        })?;
        Ok(match out.strip_prefix(bos.as_str()) {
            Some(rest) if !bos.is_empty() && vocab.should_add_bos() => rest.to_owned(),
            _ => out,
        })
    }

    /// Token ids of `text` as this model reads a prompt (with BOS, special tokens parsed).
    pub fn tokenize(&self, text: &str) -> Vec<i32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), true, true)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// The prompt's token ids as a request with `params` reads them (through its chat
    /// template), checked against its context: Err when empty or too long for `n_ctx`.
    pub fn prompt_tokens(
        &self,
        prompt: &Prompt,
        params: &InferParams,
    ) -> Result<Vec<i32>, InferError> {
        Ok(self.prepare(prompt, params)?.tokens)
    }

    /// A request made ready to decode: its prompt tokens (checked against its context) and
    /// what holds and reads its output (its grammar, or its tools' grammar and parser).
    pub fn prepare(&self, prompt: &Prompt, params: &InferParams) -> Result<Prepared, InferError> {
        let (text, plan) = self.render_for(prompt, params.chat_template.as_deref())?;
        let tokens = self.tokenize(&text);
        if tokens.is_empty() {
            return Err(InferError::Engine("the prompt has no tokens".into()));
        }
        let n_ctx = params.n_ctx.max(8);
        if tokens.len() >= n_ctx as usize {
            return Err(InferError::PromptTooLong {
                tokens: tokens.len(),
                n_ctx,
            });
        }
        let schema = match prompt.schema() {
            Some(_) if plan.is_some() || params.grammar.is_some() => {
                return Err(InferError::Tools(
                    "a JSON schema for the answer cannot go with tool calls, a grammar or JSON mode".into(),
                ));
            }
            Some(s) => {
                let schema: serde_json::Value = serde_json::from_str(s)
                    .map_err(|e| InferError::Schema(format!("it is not JSON: {e}")))?;
                Some(grammar_of_schema(&schema).map_err(InferError::Schema)?)
            }
            None => None,
        };
        let (grammar, triggers) = match &plan {
            None => (schema.or_else(|| params.grammar.clone()), Vec::new()),
            Some(_) if params.grammar.is_some() => {
                return Err(InferError::Tools(
                    "a request with tools cannot also have a grammar or JSON mode".into(),
                ));
            }
            Some(p) => {
                let call = grammar_of_schema(&p.schema).map_err(InferError::Tools)?;
                let triggers = if p.lazy {
                    vec![p.format.trigger().to_owned()]
                } else {
                    Vec::new()
                };
                (Some(p.wrap(&call)), triggers)
            }
        };
        Ok(Prepared {
            tokens,
            grammar,
            triggers,
            tools: plan,
            logprobs: prompt.logprobs(),
        })
    }

    /// The text of generated `tokens` with special tokens written out (a tool-call format's
    /// marks may be control tokens, which the answer's text leaves out).
    pub fn special_text(&self, tokens: &[i32]) -> String {
        let vocab = self.model.vocab();
        let mut bytes = Vec::new();
        let mut piece = Vec::new();
        for &t in tokens {
            piece.clear();
            vocab.token_to_piece_into(LlamaToken(t), &mut piece, true, None);
            bytes.extend_from_slice(&piece);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The log-probability of `token` among `logits` (the model's own distribution, before
    /// any sampling setting), with the `top` likeliest tokens.
    pub fn logprob(&self, logits: &[f32], token: i32, top: u8) -> TokenLogprob {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        let log_z = max + sum.ln() as f32;
        let entry = |t: i32| {
            let mut bytes = Vec::new();
            self.piece(t, &mut bytes);
            let lp = logits
                .get(t as usize)
                .map_or(f32::NEG_INFINITY, |&l| l - log_z);
            (String::from_utf8_lossy(&bytes).into_owned(), bytes, lp)
        };
        let mut best: Vec<usize> = (0..logits.len()).collect();
        let k = usize::from(top).min(best.len());
        if k > 0 {
            best.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
            best.truncate(k);
            best.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        } else {
            best.clear();
        }
        let (token_text, bytes, logprob) = entry(token);
        TokenLogprob {
            token: token_text,
            bytes,
            logprob,
            top: best
                .into_iter()
                .map(|t| {
                    let (token, bytes, logprob) = entry(t as i32);
                    TopLogprob {
                        token,
                        bytes,
                        logprob,
                    }
                })
                .collect(),
        }
    }

    /// Run one request. `on_token` gets each token id with the text it releases, and at the
    /// end `None` with any text still held back. Text is released as complete UTF-8 and never
    /// past a possible start of a stop string, so the pieces always add up to the result's
    /// text.
    pub fn generate(
        &self,
        prompt: &Prompt,
        params: &InferParams,
        cancelled: &dyn Fn() -> bool,
        on_token: &mut dyn FnMut(Option<i32>, &str),
    ) -> Result<Generation, InferError> {
        let prepared = self.prepare(prompt, params)?;
        let tokens: Vec<LlamaToken> = prepared.tokens.iter().copied().map(LlamaToken).collect();
        let vocab = self.model.vocab();
        let n_ctx = params.n_ctx.max(8);
        let backend = backend()?;
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_ubatch(UBATCH.min(n_ctx))
            .with_n_threads(threads(params.threads))
            .with_n_threads_batch(threads(params.threads));
        let mut ctx = self
            .model
            .new_context(backend, ctx_params)
            .map_err(|e| InferError::Engine(format!("cannot create a context: {e}")))?;
        let engine = |e: &dyn std::fmt::Display| InferError::Engine(e.to_string());

        let started = Instant::now();
        let mut batch = LlamaBatch::new(tokens.len().max(1), 1);
        let last = tokens.len() as i32 - 1;
        for (i, t) in (0i32..).zip(tokens.iter().copied()) {
            batch.add(t, i, &[0], i == last).map_err(|e| engine(&e))?;
        }
        ctx.decode(&mut batch).map_err(|e| engine(&e))?;
        let prompt_ms = started.elapsed().as_secs_f64() * 1000.0;

        let mut sampler = sampler(self, params, &prepared)?;
        let mut logprobs = prepared.logprobs.map(|_| Vec::new());
        let started = Instant::now();
        let mut pos = tokens.len() as i32;
        let mut out_tokens = Vec::new();
        let mut text = Detokenizer::new(&params.stop);
        let mut finish = Finish::Length;
        let mut piece = Vec::with_capacity(16);
        while out_tokens.len() < params.max_tokens as usize {
            if cancelled() {
                return Err(InferError::Cancelled);
            }
            // The context asked for, not llama.cpp's (which pads it to a multiple of 256).
            if pos as u32 >= n_ctx {
                break;
            }
            let token = sampler.sample(&ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                finish = Finish::Stop;
                break;
            }
            if let (Some(list), Some(top)) = (logprobs.as_mut(), prepared.logprobs) {
                list.push(self.logprob(ctx.get_logits_ith(batch.n_tokens() - 1), token.0, top));
            }
            out_tokens.push(token.0);
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            let (new, stopped) = text.push(&piece);
            on_token(Some(token.0), &new);
            if stopped {
                finish = Finish::Stop;
                break;
            }
            batch.clear();
            batch.add(token, pos, &[0], true).map_err(|e| engine(&e))?;
            pos += 1;
            ctx.decode(&mut batch).map_err(|e| engine(&e))?;
        }
        let rest = text.flush();
        if !rest.is_empty() {
            on_token(None, &rest);
        }
        let generation_ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Some(list) = logprobs.as_mut() {
            list.truncate(out_tokens.len());
        }
        let mut g = Generation {
            text: text.text(),
            completion_tokens: out_tokens.len() as u32,
            tokens: out_tokens,
            prompt_tokens: tokens.len() as u32,
            cached_tokens: 0,
            finish_reason: finish,
            prompt_ms,
            generation_ms,
            stages: Vec::new(),
            replaced: Vec::new(),
            tool_calls: Vec::new(),
            logprobs,
        };
        prepared.conclude(self, &mut g);
        Ok(g)
    }
}

/// A request ready to decode ([`LlmModel::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub tokens: Vec<i32>,
    /// The grammar the output follows: the request's own, JSON mode's, or its tools'.
    pub grammar: Option<String>,
    /// Texts that wake the grammar (empty: it holds from the first token).
    pub triggers: Vec<String>,
    /// How tool calls are read from the output.
    pub tools: Option<tools::Plan>,
    /// Alternatives to report with each token's log-probability (None: no log-probabilities).
    pub logprobs: Option<u8>,
}

impl Prepared {
    /// Read the tool calls out of a finished generation (its text then holds what the model
    /// said besides them): `finish_reason` becomes `tool_calls` when there are any.
    pub fn conclude(&self, model: &LlmModel, g: &mut Generation) {
        let Some(plan) = &self.tools else { return };
        let text = model.special_text(&g.tokens);
        // Call ids differ between requests: the tokens and the time seed them.
        let seed = {
            let mut h = blake3::Hasher::new();
            h.update(text.as_bytes());
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            h.update(&now.to_le_bytes());
            let b = h.finalize();
            u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8]))
        };
        let (content, calls) = plan.parse(&text, seed);
        if !calls.is_empty() {
            g.text = content;
            g.tool_calls = calls;
            g.finish_reason = Finish::ToolCalls;
        }
    }
}

/// The GBNF grammar of a JSON schema (llama.cpp's converter); Err says what it cannot take.
/// Between JSON tokens it allows one space at most (llama.cpp's allows up to two new lines
/// and 20 spaces or tabs, which a weak model fills before it writes anything), so the JSON
/// is compact.
pub fn grammar_of_schema(schema: &serde_json::Value) -> Result<String, String> {
    let text = schema.to_string();
    let (made, log) = crate::llm::ffi::capture_log(|| {
        std::panic::catch_unwind(|| llama_cpp_2::json_schema_to_grammar(&text))
    });
    match made {
        Ok(Ok(g)) => Ok(g
            .lines()
            .map(|l| {
                if l.starts_with("space ::=") {
                    "space ::= \" \"?"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")),
        Ok(Err(e)) => Err(log
            .lines()
            .find(|l| !l.trim().is_empty())
            .map_or_else(|| e.to_string(), str::to_owned)),
        Err(_) => Err("the JSON schema cannot be converted into a grammar".into()),
    }
}

/// Turns generated tokens' bytes into text as it streams: it releases only complete UTF-8
/// and never past a possible start of a stop string, so the released pieces always add up
/// to [`Detokenizer::text`].
#[derive(Debug)]
pub struct Detokenizer {
    bytes: Vec<u8>,
    /// Bytes already released.
    emitted: usize,
    /// The longest stop string less one byte: what a later token may still complete.
    hold: usize,
    stop: Vec<String>,
}

impl Detokenizer {
    pub fn new(stop: &[String]) -> Detokenizer {
        Detokenizer {
            bytes: Vec::new(),
            emitted: 0,
            hold: stop
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(0)
                .saturating_sub(1),
            stop: stop.to_vec(),
        }
    }

    /// Add a token's bytes: the text it releases, and whether a stop string appeared (the
    /// text is then cut where it starts).
    pub fn push(&mut self, piece: &[u8]) -> (String, bool) {
        self.bytes.extend_from_slice(piece);
        if let Some(cut) = stop_at(&self.bytes, &self.stop) {
            self.bytes.truncate(cut.max(self.emitted));
            return (String::new(), true);
        }
        let upto = self.bytes.len().saturating_sub(self.hold).max(self.emitted);
        let (new, used) = utf8_release(&self.bytes[self.emitted..upto]);
        self.emitted += used;
        (new, false)
    }

    /// Release the rest, at the end.
    pub fn flush(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.bytes[self.emitted..]).into_owned();
        self.emitted = self.bytes.len();
        rest
    }

    /// All the text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// The text `bytes` can release now, and how many bytes that uses: everything up to an
/// incomplete character at the end (it may be completed by the next token). Invalid
/// sequences become U+FFFD, as `String::from_utf8_lossy` makes them in the final text, so
/// the released pieces add up to it.
fn utf8_release(bytes: &[u8]) -> (String, usize) {
    let mut out = String::new();
    let mut at = 0;
    while at < bytes.len() {
        match std::str::from_utf8(&bytes[at..]) {
            Ok(s) => {
                out.push_str(s);
                at = bytes.len();
            }
            Err(e) => {
                let valid = at + e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[at..valid]).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        at = valid + n;
                    }
                    // Incomplete at the end: keep it for the next token.
                    None => return (out, valid),
                }
            }
        }
    }
    (out, at)
}

/// Where the first stop string starts in `bytes`, if one appears.
fn stop_at(bytes: &[u8], stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| bytes.windows(s.len()).position(|w| w == s.as_bytes()))
        .min()
}

/// The sampler chain for `p`: greedy at temperature 0, else penalties → top-k → top-p →
/// min-p → temperature → a seeded draw; behind its grammar, if it has one.
fn sampler(
    model: &LlmModel,
    p: &InferParams,
    prepared: &Prepared,
) -> Result<LlamaSampler, InferError> {
    sampler_for(
        model,
        &p.sampling(),
        prepared.grammar.as_deref(),
        &prepared.triggers,
    )
}

/// [`sampler_chain`] for `model`, with `grammar` (GBNF, start rule `root`) first: it masks
/// every token that would leave the grammar, and ends generation only where it is complete.
/// With `triggers`, the grammar is lazy: it holds from the first trigger text the model
/// writes (the trigger included), and the model writes freely until then.
pub fn sampler_for(
    model: &LlmModel,
    p: &SamplerParams,
    grammar: Option<&str>,
    triggers: &[String],
) -> Result<LlamaSampler, InferError> {
    let chain = sampler_chain(p, model.model.n_vocab());
    let Some(g) = grammar else {
        return Ok(chain);
    };
    let (made, log) = crate::llm::ffi::capture_log(|| {
        if triggers.is_empty() {
            LlamaSampler::grammar(&model.model, g, "root")
        } else {
            LlamaSampler::grammar_lazy(&model.model, g, "root", triggers, &[])
        }
    });
    let grammar = made.map_err(|e| {
        let why = log
            .lines()
            .find(|l| l.contains("parse") || l.contains("error"))
            .map_or_else(|| e.to_string(), str::to_owned);
        InferError::Grammar(why)
    })?;
    Ok(LlamaSampler::chain_simple([grammar, chain]))
}

impl InferParams {
    /// The request's sampling settings.
    pub fn sampling(&self) -> SamplerParams {
        SamplerParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
        }
    }
}

/// Sampling settings: what picks the next token from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerParams {
    /// 0: greedy.
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub seed: u32,
}

/// llama.cpp's sampler chain for these settings: the one `infer` samples with, and the last
/// stage of a pipeline too, so both pick the same tokens from the same logits. The repeat
/// penalty looks at the last 64 tokens accepted.
pub fn sampler_chain(p: &SamplerParams, n_vocab: i32) -> LlamaSampler {
    let penalize = (p.repeat_penalty - 1.0).abs() > f32::EPSILON;
    if p.temperature <= 0.0 {
        return if penalize {
            LlamaSampler::chain_simple([
                LlamaSampler::penalties(n_vocab, 64, p.repeat_penalty, 0.0, 0.0),
                LlamaSampler::greedy(),
            ])
        } else {
            LlamaSampler::greedy()
        };
    }
    LlamaSampler::chain_simple([
        LlamaSampler::penalties(n_vocab, 64, p.repeat_penalty, 0.0, 0.0),
        LlamaSampler::top_k(p.top_k),
        LlamaSampler::top_p(p.top_p, 1),
        LlamaSampler::min_p(p.min_p, 1),
        LlamaSampler::temp(p.temperature),
        LlamaSampler::dist(p.seed),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_text_adds_up_to_the_lossy_text() {
        // Valid text, an invalid byte, a character cut in two at the end.
        let bytes = b"ab\xffc\xe2\x82";
        let (text, used) = utf8_release(bytes);
        assert_eq!(text, "ab\u{fffd}c");
        assert_eq!(used, 4);
        let (rest, _) = utf8_release(b"\xe2\x82\xac");
        assert_eq!(
            format!("{text}{rest}"),
            String::from_utf8_lossy(b"ab\xffc\xe2\x82\xac")
        );
    }

    #[test]
    fn stop_strings_cut_at_the_first() {
        let stop = vec!["END".to_owned(), "xy".to_owned()];
        assert_eq!(stop_at(b"abc xy END", &stop), Some(4));
        assert_eq!(stop_at(b"abc", &stop), None);
        assert_eq!(stop_at(b"abc", &[String::new()]), None);
    }
}
