//! The Rust API's `SiameseModel` for Python (`_core.NativeSiameseModel`): the model a program
//! without Python builds and loads, so the tests can hold it against the Python model.
use super::convert::tensor_to_py;
use super::errors::{no_panic, IntoPy};
use crate::{create_body, create_head, HeadConfig, SiameseModel};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use std::sync::Mutex;

#[pyclass(frozen, module = "siamese_rs._core", name = "NativeSiameseModel")]
pub struct PyNativeSiamese(Mutex<SiameseModel>);

#[pymethods]
impl PyNativeSiamese {
    /// `SiameseModel(create_body(arch, n_in, cut), create_head(nf, n_out, ...))` built in Rust.
    #[new]
    #[pyo3(signature = (arch, n_in, cut, nf, n_out, lin_ftrs=None, ps=vec![0.5], pool=true,
                        concat_pool=true, first_bn=true, bn_final=false, lin_first=false, y_range=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        arch: &str,
        n_in: i64,
        cut: Option<i64>,
        nf: i64,
        n_out: i64,
        lin_ftrs: Option<Vec<i64>>,
        ps: Vec<f64>,
        pool: bool,
        concat_pool: bool,
        first_bn: bool,
        bn_final: bool,
        lin_first: bool,
        y_range: Option<(f64, f64)>,
    ) -> PyResult<Self> {
        let cfg = HeadConfig {
            lin_ftrs,
            ps,
            pool,
            concat_pool,
            first_bn,
            bn_final,
            lin_first,
            y_range,
            ..HeadConfig::new(nf, n_out)
        };
        let model = no_panic(|| {
            Ok(SiameseModel::new(
                create_body(arch, n_in, cut)?,
                create_head(&cfg)?,
            ))
        })
        .py()?;
        Ok(PyNativeSiamese(Mutex::new(model)))
    }

    /// `state_dict` keys, in order.
    fn state_keys(&self) -> Vec<String> {
        lock(&self.0)
            .state_dict()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// Loads a `.safetensors` state dict of fastai's keys.
    fn load_safetensors(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        // The model's tensors are written in place; `&self` suffices, as for `nn.Module`.
        let state = no_panic(|| {
            tch::Tensor::read_safetensors(&path).map_err(|e| {
                crate::Error::Weights(format!(
                    "cannot read {}: {}",
                    path.display(),
                    crate::Error::from(e)
                ))
            })
        })
        .py()?;
        let model = &self.0;
        py.allow_threads(move || no_panic(|| lock(model).copy_state_dict(&state)))
            .py()
    }

    #[pyo3(signature = (x1, x2, train=false))]
    fn forward(
        &self,
        py: Python<'_>,
        x1: PyTensor,
        x2: PyTensor,
        train: bool,
    ) -> PyResult<PyObject> {
        let (model, x1, x2) = (&self.0, x1.0, x2.0);
        let out = py
            .allow_threads(move || no_panic(|| lock(model).forward_t(&x1, &x2, train)))
            .py()?;
        tensor_to_py(py, out)
    }

    fn encode(&self, py: Python<'_>, x: PyTensor) -> PyResult<PyObject> {
        let (model, x) = (&self.0, x.0);
        let out = py
            .allow_threads(move || no_panic(|| lock(model).encode(&x)))
            .py()?;
        tensor_to_py(py, out)
    }
}

/// The model, also after a panic was caught while it was locked (its tensors stay usable).
fn lock(m: &Mutex<SiameseModel>) -> std::sync::MutexGuard<'_, SiameseModel> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
