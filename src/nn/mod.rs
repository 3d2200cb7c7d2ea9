//! The module tree: kinds and their settings (`kind`), trees built by the architectures
//! (`node`), parameter initialisers (`init`) and the stateless executor (`exec`, `ops`).
pub mod container;
pub mod exec;
pub mod init;
pub mod kind;
pub mod node;
mod onednn;
pub(crate) mod ops;
mod settings;
#[cfg(test)]
pub(crate) mod testing;

pub use exec::Graph;
pub use kind::{Kind, Value};
pub use node::Node;
