//! Deploying without Python (the `cli` feature): the model file `sr.export_model` writes
//! (`model_file`), fastai's validation transforms on image files (`images`), and galleries of
//! encoded images that `sr.PairIndex.load` reads too (`gallery`).
pub mod document;
pub mod fingerprint;
pub mod gallery;
pub mod images;
pub mod model_file;

pub use gallery::{Gallery, PairStage};
pub use images::Preprocess;
pub use model_file::{ModelFile, ModelInfo};
