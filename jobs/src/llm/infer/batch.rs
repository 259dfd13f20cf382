//! Continuous batching: several requests to one model decoded together in one llama.cpp
//! context, with a prompt cache.
//!
//! A [`Batcher`] is a thread that owns one context of `slots` sequences (llama.cpp's
//! `n_seq_max`), each with a KV cache of its own of `n_ctx` positions (not one buffer shared
//! by all, llama-server's default: there every token attends over every sequence's cells,
//! which cost this bench's 8 requests a third of their throughput). Requests join
//! the running batch at a token boundary: every step decodes one token of each generating
//! sequence and a bounded piece of the prompts of the ones that joined ([`PREFILL_STEP`]
//! tokens in all), then samples each sequence that has logits with its own sampler chain.
//! A request waits only for a free sequence, not for the others to finish.
//!
//! **Prompt cache.** A sequence keeps its tokens in the KV cache after its request ends. A new
//! request takes the free sequence whose cached tokens share the longest prefix with its
//! prompt and decodes only the rest (the turns of a chat, a shared system prompt), and its
//! result says how many prompt tokens were cached. A context idle for [`IDLE`] is dropped with
//! its cache (it holds `slots × n_ctx` positions of KV memory); the next request makes a new
//! one.
//!
//! **The cache never changes an answer.** llama.cpp's numbers for a token depend on the batch
//! it is decoded in (its kernels sum in an order set by the batch's shape), so a prompt whose
//! first tokens came from the cache and the rest in other pieces would be computed a little
//! differently, and a long greedy answer parts from the fresh one (seen: after 426 tokens).
//! So a prompt is always prefilled in pieces that end at multiples of [`PREFILL_STEP`]
//! positions, as a fresh request alone is, and a request reuses only whole such pieces that
//! were decoded alone ([`Slot::clean`]): a prefix of at least [`PREFILL_STEP`] tokens, which is
//! where reuse pays. A request's greedy tokens then do not depend on what the node served
//! before it. (Requests prefilled at the same moment share decodes, and are not covered.)
//!
//! The thread sends each request's sampled token ids back on the request's own channel; the
//! caller's thread turns them into text, applies stop strings and polls its cancel flag, and
//! halts the sequence by setting [`Request::halt`] or by dropping its receiver. Everything
//! llama.cpp-side (context, samplers) stays on the batcher's thread.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::engine::{LlmModel, SamplerParams, UBATCH, backend, sampler_for};
use super::types::{Finish, InferError, TokenLogprob};

/// Prompt tokens (of all joining requests together) decoded per step: a long prompt is
/// prefilled in pieces, so the sequences already generating keep their pace.
pub const PREFILL_STEP: usize = UBATCH as usize;

/// A batcher with nothing to do for this long ends, freeing its context and cache.
pub const IDLE: Duration = Duration::from_secs(600);

/// When a request arrives at an idle batcher, it waits for the requests arriving with it
/// (a burst from several clients, or leased together from the queue) until none has come for
/// [`GATHER_QUIET`], at most [`GATHER_MAX`], so that they prefill in one step instead of the
/// first one starting alone and the others then waiting behind its prompt. A lone request
/// pays [`GATHER_QUIET`] once.
pub const GATHER_QUIET: Duration = Duration::from_millis(2);
pub const GATHER_MAX: Duration = Duration::from_millis(10);

/// One request to a [`Batcher`].
#[derive(Debug)]
pub struct Request {
    /// The prompt's tokens (at least one, fewer than `n_ctx`).
    pub tokens: Vec<i32>,
    /// The request's context: generation stops when its positions are used up.
    pub n_ctx: u32,
    pub max_tokens: u32,
    pub sampling: SamplerParams,
    /// A GBNF grammar the output must follow.
    pub grammar: Option<String>,
    /// Texts that wake the grammar (empty: it holds from the first token).
    pub triggers: Vec<String>,
    /// Report each token's log-probability with this many alternatives.
    pub logprobs: Option<u8>,
    /// Set by the caller to end the request now (cancelled, or a stop string appeared).
    pub halt: Arc<AtomicBool>,
    pub events: mpsc::Sender<Event>,
}

/// What a request hears back, in order: `Started`, then `Token`s, then `End` (or `Failed` at
/// any point).
#[derive(Debug)]
pub enum Event {
    /// The prompt is decoded: `cached` of its tokens came from the cache, the rest took
    /// `prompt_ms`.
    Started {
        cached: u32,
        prompt_ms: f64,
    },
    /// A sampled token (not an end-of-generation token), with its log-probability when the
    /// request asked for them.
    Token(i32, Option<TokenLogprob>),
    /// Generation ended by itself: an end-of-generation token, `max_tokens`, or the context
    /// was full.
    End(Finish),
    Failed(InferError),
}

/// The handle of a batcher thread: where requests go.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Request>,
    slots: u32,
}

impl Batcher {
    /// Start a batcher for `model`: `slots` sequences of `n_ctx` positions each, decoding
    /// with `threads` threads.
    pub fn spawn(
        model: Arc<LlmModel>,
        slots: u32,
        n_ctx: u32,
        threads: i32,
    ) -> Result<Batcher, InferError> {
        let (tx, rx) = mpsc::channel();
        let slots = slots.max(1);
        std::thread::Builder::new()
            .name("myco-batcher".into())
            .spawn(move || serve(&model, slots, n_ctx, threads, &rx))
            .map_err(|e| InferError::Engine(format!("cannot start a decode thread: {e}")))?;
        Ok(Batcher { tx, slots })
    }

    /// How many requests it decodes at once.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Hand `request` over; Err(request) when the thread has ended (idle, or its context
    /// could not be made), so that the caller starts another.
    pub fn submit(&self, request: Request) -> Result<(), Box<Request>> {
        self.tx.send(request).map_err(|e| Box::new(e.0))
    }
}

/// A request being served in a sequence.
struct Active {
    req: Request,
    /// Prompt tokens not decoded yet.
    pending: VecDeque<LlamaToken>,
    /// The next position to write.
    pos: i32,
    /// The token sampled last, to decode next (None while the prompt is prefilled).
    next: Option<LlamaToken>,
    sampler: LlamaSampler,
    generated: u32,
    cached: u32,
    started: Instant,
    /// Its index in the batch being decoded, if it asked for logits.
    logits_at: Option<i32>,
}

/// One sequence of the context.
struct Slot {
    /// The tokens in its KV cache, positions 0.. in order.
    cached: Vec<LlamaToken>,
    /// Of those, the first ones decoded in whole [`PREFILL_STEP`] pieces at multiples of it,
    /// each alone in its decode (as a fresh request computes them): what may be reused.
    clean: usize,
    last_used: Instant,
    active: Option<Active>,
}

fn serve(model: &LlmModel, slots: u32, n_ctx: u32, threads: i32, rx: &mpsc::Receiver<Request>) {
    let ctx = backend().and_then(|b| {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx.saturating_mul(slots)))
            .with_n_seq_max(slots)
            .with_kv_unified(false)
            .with_n_batch(PREFILL_STEP as u32 + slots)
            .with_n_ubatch(UBATCH)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        model
            .llama()
            .new_context(b, params)
            .map_err(|e| InferError::Engine(format!("cannot create a context: {e}")))
    });
    let mut ctx = match ctx {
        Ok(c) => c,
        Err(e) => {
            // Fail what is queued; the thread ends and the next request makes a new one.
            while let Ok(r) = rx.try_recv() {
                let _ = r.events.send(Event::Failed(e.clone()));
            }
            return;
        }
    };
    let now = Instant::now();
    let mut seqs: Vec<Slot> = (0..slots)
        .map(|_| Slot {
            cached: Vec::new(),
            clean: 0,
            last_used: now,
            active: None,
        })
        .collect();
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut batch = LlamaBatch::new(PREFILL_STEP + slots as usize, 1);
    loop {
        let busy = seqs.iter().any(|s| s.active.is_some());
        if !busy && waiting.is_empty() {
            match rx.recv_timeout(IDLE) {
                Ok(r) => waiting.push_back(r),
                Err(_) => return,
            }
            let first = Instant::now();
            while first.elapsed() < GATHER_MAX {
                match rx.recv_timeout(GATHER_QUIET.min(GATHER_MAX.saturating_sub(first.elapsed())))
                {
                    Ok(r) => waiting.push_back(r),
                    Err(_) => break,
                }
            }
        }
        while let Ok(r) = rx.try_recv() {
            waiting.push_back(r);
        }
        waiting.retain(|r| !r.halt.load(Ordering::Relaxed));
        for s in &mut seqs {
            if s.active
                .as_ref()
                .is_some_and(|a| a.req.halt.load(Ordering::Relaxed))
            {
                finish(s, None);
            }
        }
        while let Some(free) = pick_slot(&seqs, waiting.front()) {
            let Some(req) = waiting.pop_front() else {
                break;
            };
            start(&mut ctx, &mut seqs[free], free, req, model);
        }
        if seqs.iter().all(|s| s.active.is_none()) {
            continue;
        }
        // Two decodes a step: the generating sequences' next tokens (one each: a single
        // compute step), then the joining prompts. Mixed in one batch, llama.cpp would cut it
        // into steps of one token per sequence (as many as the shortest has), and a joining
        // prompt would prefill one token per step. Each decode's logits are sampled before the
        // next decode replaces them.
        for phase in [Phase::Generate, Phase::Prefill] {
            batch.clear();
            // Where each sequence stands before this decode (for its clean prefix).
            let before: Vec<Option<i32>> = seqs
                .iter()
                .map(|s| s.active.as_ref().map(|a| a.pos))
                .collect();
            if let Err(e) = fill(&mut batch, &mut seqs, phase) {
                fail_all(&mut ctx, &mut seqs, &e);
                break;
            }
            if batch.n_tokens() == 0 {
                continue;
            }
            if phase == Phase::Prefill {
                mark_clean(&mut seqs, &before);
            }
            if let Err(e) = ctx.decode(&mut batch) {
                fail_all(&mut ctx, &mut seqs, &InferError::Engine(e.to_string()));
                break;
            }
            for s in &mut seqs {
                step(&ctx, model, s);
            }
        }
    }
}

/// After a prefill's batch is filled: a sequence whose piece is alone in it, whole
/// ([`PREFILL_STEP`] tokens from a multiple of it) and follows its clean prefix extends that
/// prefix (the decode computes it as a fresh request would).
fn mark_clean(seqs: &mut [Slot], before: &[Option<i32>]) {
    let moved: Vec<usize> = seqs
        .iter()
        .zip(before)
        .enumerate()
        .filter(|(_, (s, b))| matches!((s.active.as_ref(), b), (Some(a), Some(b)) if a.pos != *b))
        .map(|(i, _)| i)
        .collect();
    let [only] = moved[..] else {
        return;
    };
    let (Some(from), Some(a)) = (before[only], seqs[only].active.as_ref()) else {
        return;
    };
    let (from, to) = (from as usize, a.pos as usize);
    let s = &mut seqs[only];
    if s.clean == from && from.is_multiple_of(PREFILL_STEP) && to - from == PREFILL_STEP {
        s.clean = to;
    }
}

/// What one decode of a step carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The next token of each generating sequence.
    Generate,
    /// Prompt tokens of the joining sequences, up to [`PREFILL_STEP`] in all.
    Prefill,
}

/// The free sequence for `req`: the one whose cache shares the longest prefix with its
/// prompt, else the one unused longest.
fn pick_slot(seqs: &[Slot], req: Option<&Request>) -> Option<usize> {
    let req = req?;
    seqs.iter()
        .enumerate()
        .filter(|(_, s)| s.active.is_none())
        .max_by_key(|(_, s)| {
            let shared = common_prefix(&s.cached, &req.tokens);
            (shared, std::cmp::Reverse(s.last_used))
        })
        .map(|(i, _)| i)
}

fn common_prefix(cached: &[LlamaToken], tokens: &[i32]) -> usize {
    cached
        .iter()
        .zip(tokens)
        .take_while(|(a, b)| a.0 == **b)
        .count()
}

/// Put `req` in sequence `seq`: keep the cached prefix it shares (at most all but its last
/// token, whose logits it needs), drop the rest of that sequence's cache.
fn start(ctx: &mut LlamaContext<'_>, slot: &mut Slot, seq: usize, req: Request, model: &LlmModel) {
    let sampler = match sampler_for(model, &req.sampling, req.grammar.as_deref(), &req.triggers) {
        Ok(s) => s,
        Err(e) => {
            let _ = req.events.send(Event::Failed(e));
            return;
        }
    };
    // Only whole clean pieces (see the module's note); at least the last token is decoded.
    let shared = common_prefix(&slot.cached, &req.tokens)
        .min(req.tokens.len() - 1)
        .min(slot.clean)
        / PREFILL_STEP
        * PREFILL_STEP;
    let kept = ctx
        .clear_kv_cache_seq(Some(seq as u32), Some(shared as u32), None)
        .unwrap_or(false);
    let shared = if kept {
        shared
    } else {
        // A cache that cannot be cut there (a recurrent model): start the sequence over.
        let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
        0
    };
    slot.cached.truncate(shared);
    slot.clean = slot.clean.min(shared);
    slot.last_used = Instant::now();
    slot.active = Some(Active {
        pending: req.tokens[shared..]
            .iter()
            .map(|&t| LlamaToken(t))
            .collect(),
        pos: shared as i32,
        next: None,
        sampler,
        generated: 0,
        cached: shared as u32,
        started: Instant::now(),
        logits_at: None,
        req,
    });
}

/// The batch of one phase of a step: the next token of each generating sequence, or prompt
/// tokens of the prefilling ones up to [`PREFILL_STEP`] in all, logits where a prompt ends.
fn fill(batch: &mut LlamaBatch<'_>, seqs: &mut [Slot], phase: Phase) -> Result<(), InferError> {
    let engine = |e: &dyn std::fmt::Display| InferError::Engine(e.to_string());
    let mut at = 0i32;
    for s in seqs.iter_mut() {
        if let Some(a) = s.active.as_mut() {
            a.logits_at = None;
        }
    }
    if phase == Phase::Generate {
        for (seq, s) in seqs.iter_mut().enumerate() {
            let Some(a) = s.active.as_mut() else { continue };
            let Some(t) = a.next.take() else { continue };
            batch
                .add(t, a.pos, &[seq as i32], true)
                .map_err(|e| engine(&e))?;
            s.cached.push(t);
            a.pos += 1;
            a.logits_at = Some(at);
            at += 1;
        }
        return Ok(());
    }
    let mut budget = PREFILL_STEP;
    for (seq, s) in seqs.iter_mut().enumerate() {
        let Some(a) = s.active.as_mut() else { continue };
        // A piece ends at the next multiple of PREFILL_STEP, as a fresh request's do.
        let mut room = PREFILL_STEP - a.pos as usize % PREFILL_STEP;
        while budget > 0 && room > 0 {
            room -= 1;
            let Some(t) = a.pending.pop_front() else {
                break;
            };
            let last = a.pending.is_empty();
            batch
                .add(t, a.pos, &[seq as i32], last)
                .map_err(|e| engine(&e))?;
            s.cached.push(t);
            a.pos += 1;
            budget -= 1;
            if last {
                a.logits_at = Some(at);
            }
            at += 1;
        }
    }
    Ok(())
}

/// After a decode: sample the sequence if it has logits, and tell its request.
fn step(ctx: &LlamaContext<'_>, model: &LlmModel, s: &mut Slot) {
    let Some(a) = s.active.as_mut() else { return };
    let Some(idx) = a.logits_at.take() else {
        return;
    };
    if a.generated == 0 {
        let prompt_ms = a.started.elapsed().as_secs_f64() * 1000.0;
        let started = Event::Started {
            cached: a.cached,
            prompt_ms,
        };
        if a.req.events.send(started).is_err() {
            return finish(s, None);
        }
    }
    // As the single-request loop: the context asked for, then max_tokens, bound the length.
    if a.pos as u32 >= a.req.n_ctx || a.generated >= a.req.max_tokens {
        return finish(s, Some(Finish::Length));
    }
    let token = a.sampler.sample(ctx, idx);
    if model.is_eog(token.0) {
        return finish(s, Some(Finish::Stop));
    }
    a.generated += 1;
    let logprob = a
        .req
        .logprobs
        .map(|top| model.logprob(ctx.get_logits_ith(idx), token.0, top));
    if a.req.events.send(Event::Token(token.0, logprob)).is_err() {
        return finish(s, None);
    }
    if a.generated >= a.req.max_tokens {
        return finish(s, Some(Finish::Length));
    }
    a.next = Some(token);
}

/// End the sequence's request (telling it why, if it did not halt itself); its cache stays.
fn finish(s: &mut Slot, why: Option<Finish>) {
    if let Some(a) = s.active.take()
        && let Some(f) = why
    {
        let _ = a.req.events.send(Event::End(f));
    }
    s.last_used = Instant::now();
}

/// A decode failed: every request in the batch fails (the engine's fault: retryable), and
/// the caches go, since what they hold is no longer known.
fn fail_all(ctx: &mut LlamaContext<'_>, seqs: &mut [Slot], e: &InferError) {
    for s in seqs.iter_mut() {
        if let Some(a) = s.active.take() {
            let _ = a.req.events.send(Event::Failed(e.clone()));
        }
        s.cached.clear();
        s.clean = 0;
    }
    ctx.clear_kv_cache();
}
