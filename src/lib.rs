//! siamese-rs: the building blocks of fastai's Siamese tutorial with a libtorch core.
//!
//! `nn` holds the module kinds, initialisers and the stateless executor; `arch` the
//! architecture families and the arch table; `head` and `body` fastai's `create_head` and
//! the tensor side of `create_body`; `pairs` the pair stage of a split head (`PairIndex`); `digest` a cheap fingerprint
//! of tensors' values (what derived objects check to notice a model has changed);
//! `bindings` is the only module that speaks Python.
pub mod arch;
pub mod body;
pub mod digest;
pub mod error;
pub mod head;
pub mod nn;
pub mod pairs;

mod bindings;
