//! Pipeline jobs: a model split into layer-range stages across nodes. The [`runner`] (the
//! worker that leased the job) plans, opens the stages and collects the tokens; the
//! [`stages`] actor hosts this node's stages and routes the chain's frames.

pub mod runner;
pub mod stages;
