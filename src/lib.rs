//! siamese-rs: the building blocks of fastai's Siamese tutorial with a libtorch core.
//!
//! `nn` holds the module kinds, containers, initialisers and the stateless executor; `arch` the
//! architecture families and the arch table; `head` and `body` fastai's `create_head` and
//! the tensor side of `create_body`; `siamese` the two-input root; `pairs` the pair stage of a
//! split head (`PairIndex`); `checksum` what objects derived from a model (a pair index, a frozen
//! model) compare to notice that it changed; `bindings` (the `python` feature) is the only module
//! that speaks Python.
pub mod arch;
pub mod body;
pub mod checksum;
pub mod error;
pub mod head;
pub mod nn;
pub mod pairs;
pub mod siamese;

#[cfg(feature = "python")]
mod bindings;
