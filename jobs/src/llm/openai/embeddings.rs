//! `/v1/embeddings` requests read and checked into the texts an `embed` job takes, and the
//! answer's shape: for the API and for a batch's lines alike.

use serde::Deserialize;
use serde_json::json;

use super::request::Refusal;

/// `input` is a string or a list of strings, or token ids of OpenAI's `cl100k_base`
/// tokenizer (one list, or a list of lists), which LangChain's `OpenAIEmbeddings` sends by
/// default: they are decoded back into the text they stand for.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

/// The text of `cl100k_base` token ids (the tokenizer of OpenAI's embedding models, which
/// OpenAI clients count and send with); Err names the first id that is none of its.
pub fn decode_ids(ids: &[u32]) -> Result<String, String> {
    let bpe = tiktoken_rs::cl100k_base_singleton();
    bpe.decode(ids).map_err(|e| {
        format!("token ids are read as OpenAI's cl100k_base tokenizer, and these are not its: {e}")
    })
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Input,
    /// `float` (a list of numbers) or `base64` (the little-endian f32 bytes, which the
    /// official client asks for unless told otherwise).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted when it is the model's own size: these models cannot shorten their vectors.
    #[serde(default)]
    pub dimensions: Option<usize>,
}

/// How an answer writes each vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Float,
    Base64,
}

/// The longest text one input may be (OpenAI's models take 8192 tokens, these far fewer).
pub const MAX_EMBED_INPUT_BYTES: usize = 64 << 10;
/// The most text one request carries (OpenAI's limit is 300k tokens).
pub const MAX_EMBED_REQUEST_BYTES: usize = 4 << 20;
/// The most inputs one request carries (OpenAI's limit).
pub const MAX_EMBED_INPUTS: usize = 2048;

/// A request's texts, read and checked, with how to write the vectors.
#[derive(Debug)]
pub struct Texts {
    pub model: String,
    pub texts: Vec<String>,
    pub encoding: Encoding,
    pub dimensions: Option<usize>,
}

/// The body of an embeddings request, read; Err: what was sent and the shape to send.
pub fn parse(body: &[u8]) -> Result<EmbeddingsRequest, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "cannot read the request: {e}; send {{\"model\": ..., \"input\": \"text\" or [\"texts\"]}}"
        )
    })
}

/// Check a request's inputs (their number and size) and decode token ids into texts.
/// `max_tokens` is what the model reads, for the message of a text too long.
pub fn texts(req: EmbeddingsRequest) -> Result<Texts, Refusal> {
    let bad = |param: &str, message: String| Refusal {
        param: param.into(),
        message,
    };
    let encoding = match req.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(bad(
                "encoding_format",
                format!("encoding_format `{other}` is not one of \"float\", \"base64\""),
            ));
        }
    };
    let texts = match req.input {
        Input::One(t) => vec![t],
        Input::Many(v) => v,
        Input::Tokens(ids) => vec![decode_ids(&ids).map_err(|e| bad("input", e))?],
        Input::ManyTokens(lists) => lists
            .iter()
            .map(|ids| decode_ids(ids))
            .collect::<Result<_, _>>()
            .map_err(|e| bad("input", e))?,
    };
    if texts.is_empty() || texts.len() > MAX_EMBED_INPUTS {
        return Err(bad(
            "input",
            format!(
                "input holds {} texts; send 1 to {MAX_EMBED_INPUTS}",
                texts.len()
            ),
        ));
    }
    if let Some((i, t)) = texts
        .iter()
        .enumerate()
        .find(|(_, t)| t.len() > MAX_EMBED_INPUT_BYTES)
    {
        return Err(bad(
            "input",
            format!(
                "input {i} is {} bytes, more than the {MAX_EMBED_INPUT_BYTES} an input may have (the model reads only its first few hundred tokens); chunk the text (myco's chunk jobs do) and send the pieces",
                t.len(),
            ),
        ));
    }
    let total: usize = texts.iter().map(String::len).sum();
    if total > MAX_EMBED_REQUEST_BYTES {
        return Err(bad(
            "input",
            format!(
                "the inputs are {total} bytes together, more than the {MAX_EMBED_REQUEST_BYTES} a request may have; send them in several requests"
            ),
        ));
    }
    Ok(Texts {
        model: req.model,
        texts,
        encoding,
        dimensions: req.dimensions,
    })
}

/// The answer: each vector as asked, with the tokens ([`estimate_tokens`]). Err: `dimensions` asked for a size the model does not make.
pub fn answer(
    model: &str,
    estimated_tokens: usize,
    vectors: Vec<Vec<f32>>,
    encoding: Encoding,
    dimensions: Option<usize>,
) -> Result<serde_json::Value, Refusal> {
    if let Some(d) = dimensions
        && let Some(have) = vectors.first().map(Vec::len)
        && d != have
    {
        return Err(Refusal {
            param: "dimensions".into(),
            message: format!(
                "`{model}` makes {have}-dimensional vectors and cannot shorten them; leave dimensions out, or set it to {have}"
            ),
        });
    }
    let data: Vec<_> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = match encoding {
                Encoding::Float => json!(v),
                Encoding::Base64 => json!(base64_f32(&v)),
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": estimated_tokens, "total_tokens": estimated_tokens },
    }))
}

/// The tokens of `texts`, estimated (4 bytes a token) until the tokenizer counts them.
pub fn estimate_tokens(texts: &[String]) -> usize {
    texts.iter().map(|t| t.len() / 4 + 2).sum()
}

/// A vector as OpenAI's `base64` encoding has it: the f32 values' little-endian bytes.
pub fn base64_f32(v: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
