//! Values, trees and tensors across the boundary.
use crate::nn::{Kind, Node, Value};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyTuple};
use pyo3_tch::PyTensor;
use tch::Tensor;

/// A setting from Python: None, bool, int, float, or a tuple of ints (or of ints and None).
pub fn value_from_py(v: &Bound<'_, PyAny>) -> PyResult<Value> {
    if v.is_none() {
        Ok(Value::None)
    } else if v.is_instance_of::<PyBool>() {
        Ok(Value::Bool(v.extract()?))
    } else if v.is_instance_of::<PyInt>() {
        Ok(Value::Int(v.extract()?))
    } else if v.is_instance_of::<PyFloat>() {
        Ok(Value::Float(v.extract()?))
    } else if v.is_instance_of::<PyTuple>() || v.is_instance_of::<PyList>() {
        let items: Vec<Option<i64>> = v.extract()?;
        Ok(match items.iter().copied().collect::<Option<Vec<i64>>>() {
            Some(ints) => Value::Ints(ints),
            None => Value::Sizes(items),
        })
    } else {
        Err(PyTypeError::new_err(format!(
            "unsupported module setting {v}"
        )))
    }
}

/// A setting for Python.
pub fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::None => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(f) => f.into_pyobject(py)?.into_any(),
        Value::Ints(v) => PyTuple::new(py, v)?.into_any(),
        Value::Sizes(v) => PyTuple::new(py, v)?.into_any(),
    })
}

/// A tensor for Python; pyo3-tch answers `None` when wrapping fails, which we refuse.
pub fn tensor_to_py(py: Python<'_>, t: Tensor) -> PyResult<PyObject> {
    let obj = PyTensor(t).into_pyobject(py)?;
    if obj.is_none() {
        return Err(PyValueError::new_err("could not hand a tensor to Python"));
    }
    Ok(obj.unbind())
}

/// A built tree as `(kind, {setting: value}, [(name, child)], [(name, tensor)])`.
pub fn node_to_py(py: Python<'_>, node: Node) -> PyResult<PyObject> {
    let settings = PyDict::new(py);
    for (f, v) in node.kind.fields().iter().zip(&node.settings) {
        settings.set_item(f, value_to_py(py, v)?)?;
    }
    let children = node
        .children
        .into_iter()
        .map(|(n, c)| Ok((n, node_to_py(py, c)?)))
        .collect::<PyResult<Vec<_>>>()?;
    let tensors = node
        .tensors
        .into_iter()
        .map(|(n, t)| Ok((n, tensor_to_py(py, t)?)))
        .collect::<PyResult<Vec<_>>>()?;
    Ok((node.kind.name(), settings, children, tensors)
        .into_pyobject(py)?
        .into_any()
        .unbind())
}

/// A kind by name, or a TypeError naming it.
pub fn kind_from_name(name: &str) -> PyResult<Kind> {
    Kind::from_name(name).ok_or_else(|| {
        PyTypeError::new_err(format!("{name} is not a module kind the core computes"))
    })
}
