//! The model files a node holds (`~/.myco/models`): GGUF files, with their architecture and
//! shape read from the file header, and ONNX model directories. Nodes advertise these so
//! that jobs needing a model go where it is.
//!
//! Moved to [`myco_jobs::model`], which holds models in one place (with name resolution);
//! these paths stay for the crates above.

pub use myco_jobs::model::{GgufError, GgufHeader, ModelFile, ModelFormat, read_gguf_header, scan};
