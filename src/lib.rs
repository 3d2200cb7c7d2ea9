//! siamese-rs: the building blocks of fastai's Siamese tutorial with a libtorch core.
//!
//! The tutorial's model, built, loaded and run from Rust alone (no Python):
//!
//! ```
//! use siamese_rs::{create_body, create_head, HeadConfig, SiameseModel};
//! use tch::{Device, Kind, Tensor};
//! let body = create_body("resnet34", 3, None)?; // arch name, n_in, cut (None: the arch's own)
//! let head = create_head(&HeadConfig::new(1024, 2))?; // fastai 2.8.12's create_head
//! let model = SiameseModel::new(body, head);
//! // model.load_safetensors("model.safetensors")?; // a Python model's state_dict
//! let x1 = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
//! let x2 = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
//! let logits = model.forward_t(&x1, &x2, false)?;
//! assert_eq!(logits.size(), [2, 2]);
//! # Ok::<(), siamese_rs::Error>(())
//! ```
//!
//! Every architecture of the arch table ([`arch::ARCHS`]) builds by name ([`create_body`],
//! [`arch::find`]) or by its function ([`arch::resnet34`], with torchvision's `num_classes`).
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
mod model;
pub mod nn;
pub mod pairs;
pub mod siamese;

pub use body::create_body;
pub use error::{Error, Result};
pub use head::{create_head, HeadConfig};
pub use model::{Model, SiameseModel};

#[cfg(feature = "python")]
mod bindings;
#[cfg(feature = "cli")]
pub mod deploy;
