//! Deploying without Python (the `cli` feature): the model file `sr.export_model` writes
//! (`model_file`), image files read as PIL reads them (`decode`, `jpeg`, `pil`), fastai's validation
//! transforms on them (`images`), galleries of encoded images that `sr.PairIndex.load` reads too
//! (`gallery`), file names printed losslessly (`names`), the model document's checks (`document`) and
//! the model's fingerprint computed from its weights (`fingerprint`).
pub mod decode;
pub mod document;
pub mod fingerprint;
pub mod gallery;
mod gallery_file;
pub mod images;
mod jpeg;
pub mod model_file;
pub mod names;
pub mod pil;

pub use gallery::{Gallery, PairStage};
pub use images::Preprocess;
pub use model_file::{ModelFile, ModelInfo};
