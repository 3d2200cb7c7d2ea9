//! The Python module `siamese_rs._core`: thin wrappers over the core, nothing more.
mod convert;
mod errors;
mod model;
mod pairs;

use crate::arch::{self, ARCHS};
use crate::head::HeadConfig;
use crate::nn::exec::FlatModule;
use crate::nn::init::ConvCfg;
use crate::nn::{Graph, Kind};
use convert::{kind_from_name, node_to_py, tensor_to_py, value_from_py};
use errors::{no_panic, IntoPy};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3_tch::PyTensor;

/// `{kind: (fields, tensors, children)}`: the settings each module kind carries (in travel
/// order), the tensors its forward reads and the children it calls by name (None: all).
#[pyfunction]
fn kinds(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for k in Kind::ALL {
        let children = k.children().map(|c| PyTuple::new(py, c)).transpose()?;
        let spec = (
            PyTuple::new(py, k.fields())?,
            PyTuple::new(py, k.tensors())?,
            children,
        );
        d.set_item(k.name(), spec)?;
    }
    Ok(d)
}

/// The arch table as a list of dicts.
#[pyfunction]
fn archs(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let rows = PyList::empty(py);
    for a in ARCHS {
        let d = PyDict::new(py);
        d.set_item("name", a.name)?;
        d.set_item("family", a.family)?;
        d.set_item("cut", a.cut)?;
        d.set_item("split_path", a.split.path.to_vec())?;
        d.set_item("split_at", a.split.at)?;
        d.set_item("weights_file", a.weights.map(|w| w.0))?;
        d.set_item("weights_url", a.weights.map(|w| w.1))?;
        d.set_item("tv_weights", a.tv_weights)?;
        d.set_item(
            "stats",
            (
                arch::IMAGENET_STATS.0.to_vec(),
                arch::IMAGENET_STATS.1.to_vec(),
            ),
        )?;
        rows.append(d)?;
    }
    Ok(rows)
}

/// The full model of arch `name` with fresh weights, as a tree for Python.
#[pyfunction]
fn build_arch(py: Python<'_>, name: &str) -> PyResult<PyObject> {
    let node = no_panic(|| arch::find(name)?.build()).py()?;
    node_to_py(py, node)
}

/// fastai's `create_head`, as a tree for Python.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn create_head(
    py: Python<'_>,
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
) -> PyResult<PyObject> {
    let cfg = HeadConfig {
        nf,
        n_out,
        lin_ftrs,
        ps,
        pool,
        concat_pool,
        first_bn,
        bn_final,
        lin_first,
        y_range,
    };
    node_to_py(py, no_panic(|| crate::head::create_head(&cfg)).py()?)
}

/// `[(key, dtype, shape)]` of the `state_dict` of `SiameseModel(create_body(arch, n_in, cut),
/// create_head(...))`, without allocating its tensors (`cut` None: fastai's pooling rule). What
/// `load_model` compares a file's header with before building anything.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn state_shapes(
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
) -> PyResult<Vec<(String, &'static str, Vec<i64>)>> {
    let cfg = HeadConfig {
        nf,
        n_out,
        lin_ftrs,
        ps,
        pool,
        concat_pool,
        first_bn,
        bn_final,
        lin_first,
        y_range,
    };
    let shapes = no_panic(|| {
        let cut = cut.map_or_else(|| crate::body::pool_cut(arch), Ok)?;
        crate::SiameseModel::state_shapes(arch, n_in, Some(cut), &cfg)
    })
    .py()?;
    let dtype = |k: tch::Kind| {
        if k == tch::Kind::Int64 {
            "int64"
        } else {
            "float32"
        }
    };
    Ok(shapes
        .into_iter()
        .map(|(k, d, s)| (k, dtype(d), s))
        .collect())
}

/// A first conv for `n_in` channels shaped like the given one (fastai's `_update_first_layer`).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn first_conv(
    py: Python<'_>,
    cout: i64,
    k: i64,
    stride: i64,
    padding: i64,
    bias: bool,
    n_in: i64,
    pretrained: Option<PyTensor>,
) -> PyResult<PyObject> {
    let cfg = ConvCfg {
        cin: n_in,
        cout,
        k,
        stride,
        padding,
        groups: 1,
        bias,
    };
    let pretrained = pretrained.as_ref().map(|t| &t.0);
    let node = no_panic(|| crate::body::first_conv(cfg, n_in, pretrained)).py()?;
    node_to_py(py, node)
}

/// One module of a flattened tree: `(kind, settings, child_names, training, present)`.
type PyFlatModule<'py> = (String, Bound<'py, PyTuple>, Vec<String>, bool, Vec<bool>);

/// A compiled module tree (`Graph` in the core).
#[pyclass(frozen, module = "siamese_rs._core", name = "Graph")]
struct PyGraph(Graph);

#[pymethods]
impl PyGraph {
    /// Compiles `[(kind, settings, child_names, training, present), ...]` in pre-order, where
    /// each module's children follow it in the order of `child_names` and `present` says which
    /// of the kind's tensors the module holds.
    #[new]
    fn new(modules: Vec<PyFlatModule<'_>>) -> PyResult<Self> {
        let flat = modules
            .into_iter()
            .map(|(kind, settings, children, training, present)| {
                let settings = settings
                    .iter()
                    .map(|v| value_from_py(&v))
                    .collect::<PyResult<Vec<_>>>()?;
                Ok(FlatModule {
                    kind: kind_from_name(&kind)?,
                    settings,
                    children,
                    training,
                    present,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyGraph(Graph::compile(&flat).py()?))
    }

    /// Runs the tree on `inputs` with the current `tensors`, without holding the GIL.
    #[pyo3(signature = (tensors, inputs, fast=false))]
    fn forward(
        &self,
        py: Python<'_>,
        tensors: Vec<Option<PyTensor>>,
        inputs: Vec<PyTensor>,
        fast: bool,
    ) -> PyResult<PyObject> {
        let tensors: Vec<Option<tch::Tensor>> =
            tensors.into_iter().map(|t| t.map(|t| t.0)).collect();
        let inputs: Vec<tch::Tensor> = inputs.into_iter().map(|t| t.0).collect();
        let graph = &self.0;
        let out = py
            .allow_threads(move || no_panic(|| graph.forward(&tensors, inputs, fast)))
            .py()?;
        tensor_to_py(py, out)
    }
}

/// A digest of a sample of each tensor's values (`siamese_rs._watch`, for frozen models).
#[pyfunction]
fn sample_digest(tensors: Vec<PyTensor>, per_tensor: usize) -> PyResult<u64> {
    let tensors: Vec<tch::Tensor> = tensors.into_iter().map(|t| t.0).collect();
    no_panic(|| crate::checksum::sample_digest(&tensors, per_tensor)).py()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kinds, m)?)?;
    m.add_function(wrap_pyfunction!(archs, m)?)?;
    m.add_function(wrap_pyfunction!(build_arch, m)?)?;
    m.add_function(wrap_pyfunction!(create_head, m)?)?;
    m.add_function(wrap_pyfunction!(state_shapes, m)?)?;
    m.add_function(wrap_pyfunction!(first_conv, m)?)?;
    m.add_function(wrap_pyfunction!(sample_digest, m)?)?;
    m.add_class::<PyGraph>()?;
    m.add_class::<model::PyNativeSiamese>()?;
    m.add_class::<pairs::PyPairHead>()?;
    m.add_function(wrap_pyfunction!(pairs::pair_isa, m)?)?;
    m.add_function(wrap_pyfunction!(pairs::checksums, m)?)?;
    m.add("TORCH_VERSION", env!("SIAMESE_RS_TORCH_VERSION"))?;
    Ok(())
}
