//! OpenAI's API as myco reads and answers it, without the HTTP: requests checked and turned
//! into infer and embed jobs ([`request`], [`embeddings`]), and the answers' JSON
//! ([`response`]). The node's API serves them; a batch reads
//! its lines and writes its output with the same code, so a line gives what the same request
//! gives alone.

pub mod embeddings;
pub mod request;
pub mod response;
