//! The pair stage of `siamese_rs.PairIndex`: a split head and its scoring, GIL released.
use super::convert::tensor_to_py;
use super::errors::{no_panic, IntoPy};
use crate::bail;
use crate::error::{Error, Result};
use crate::pairs::{self, Isa, Layer, Output, PairHead, Rows};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// The instruction set the pair kernels run with here ("avx512", "avx2+fma" or "portable").
#[pyfunction]
pub fn pair_isa() -> &'static str {
    match isa() {
        Isa::Avx512 => "avx512",
        Isa::Avx2Fma => "avx2+fma",
        Isa::Portable => "portable",
    }
}

/// The checksum of every byte of each of `tensors` (contiguous CPU tensors), GIL released:
/// what a `PairIndex` compares to notice changed weights.
#[pyfunction]
pub fn checksums(py: Python<'_>, tensors: Vec<PyTensor>, threads: usize) -> PyResult<Vec<u64>> {
    let views = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| bytes(&t.0, i))
        .collect::<Result<Vec<_>>>()
        .py()?;
    Ok(py.allow_threads(|| crate::checksum::checksums(&views, threads)))
}

/// The bytes of `t`, a contiguous CPU tensor, borrowed.
fn bytes(t: &Tensor, i: usize) -> Result<&[u8]> {
    if t.device() != Device::Cpu || !t.is_contiguous() {
        bail!(
            Shape,
            "tensors[{i}]: expected a contiguous CPU tensor, got one on {:?}",
            t.device()
        );
    }
    let n = t.numel() * t.kind().elt_size_in_bytes();
    Ok(match n {
        0 => &[],
        // SAFETY: a contiguous CPU tensor holds `n` bytes from its data pointer; the borrow of
        // `t` keeps its storage alive for as long as the slice.
        _ => unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, n) },
    })
}

/// The values of `t`, a contiguous CPU float32 or bfloat16 tensor of `width` columns, borrowed.
fn rows<'a>(t: &'a Tensor, name: &str, width: usize) -> Result<Rows<'a>> {
    let size = t.size();
    if t.device() != Device::Cpu || size.len() != 2 || size[1] != width as i64 || !t.is_contiguous()
    {
        bail!(
            Shape,
            "{name}: expected a contiguous CPU tensor (n, {width}), got {:?} on {:?}",
            size,
            t.device()
        );
    }
    let n = t.numel();
    let ptr = t.data_ptr();
    // SAFETY: a contiguous CPU tensor of `n` elements of the matched kind; the borrow of `t`
    // keeps its storage alive for as long as the slice.
    Ok(match t.kind() {
        _ if n == 0 => Rows::F32(&[]),
        Kind::Float => Rows::F32(unsafe { std::slice::from_raw_parts(ptr as *const f32, n) }),
        Kind::BFloat16 => Rows::Bf16(unsafe { std::slice::from_raw_parts(ptr as *const u16, n) }),
        k => bail!(Type, "{name}: expected float32 or bfloat16 rows, got {k:?}"),
    })
}

fn floats(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        &t.f_to_kind(Kind::Float)?.f_contiguous()?.f_view([-1])?,
    )?)
}

/// `relu?(u + v)` of width `width`, then `layers` (`(weight, bias, relu)`), then P(same): the
/// sigmoid of one logit (`log_odds`) or the softmax at class 1 after an optional `y_range`.
#[pyclass(frozen, module = "siamese_rs._core", name = "PairHead")]
pub struct PyPairHead(PairHead);

#[pymethods]
impl PyPairHead {
    #[new]
    #[pyo3(signature = (width, relu, layers, log_odds, y_range=None))]
    fn new(
        width: usize,
        relu: bool,
        layers: Vec<(PyTensor, PyTensor, bool)>,
        log_odds: bool,
        y_range: Option<(f32, f32)>,
    ) -> PyResult<Self> {
        let build = || {
            let layers = layers
                .iter()
                .map(|(w, b, relu)| {
                    let n_in = w.size().last().copied().unwrap_or(0) as usize;
                    Layer::new(&floats(w)?, floats(b)?, n_in, *relu)
                })
                .collect::<Result<Vec<_>>>()?;
            let output = if log_odds {
                Output::LogOdds
            } else {
                Output::Softmax { y_range }
            };
            PairHead::new(width, relu, layers, output)
        };
        Ok(PyPairHead(no_panic(build).py()?))
    }

    /// Columns of `u` and `v`.
    #[getter]
    fn width(&self) -> usize {
        self.0.width
    }

    /// `(n_u, n_v)` P(same) of every pair (`u` row, `v` row) on `threads` threads.
    fn score(
        &self,
        py: Python<'_>,
        u: PyTensor,
        v: PyTensor,
        threads: usize,
    ) -> PyResult<PyObject> {
        let (head, w) = (&self.0, self.0.width);
        let (u, v) = (rows(&u.0, "u", w).py()?, rows(&v.0, "v", w).py()?);
        let (nu, nv) = (u.len() / w, v.len() / w);
        let out = Tensor::f_empty([nu as i64, nv as i64], (Kind::Float, Device::Cpu))
            .map_err(Error::from)
            .py()?;
        let (ptr, len) = (out.data_ptr() as usize, nu * nv);
        py.allow_threads(|| {
            no_panic(|| {
                // SAFETY: `out` is a fresh contiguous float32 tensor of `len` values that
                // nothing else references until this call returns.
                let dst = match len {
                    0 => &mut [],
                    _ => unsafe { std::slice::from_raw_parts_mut(ptr as *mut f32, len) },
                };
                pairs::score(head, isa(), u, v, dst, threads)
            })
        })
        .py()?;
        tensor_to_py(py, out)
    }

    /// `(n,)` P(same) of the pairs (`u` row `k`, `v` row `k`).
    fn score_each(
        &self,
        py: Python<'_>,
        u: PyTensor,
        v: PyTensor,
        threads: usize,
    ) -> PyResult<PyObject> {
        let (head, w) = (&self.0, self.0.width);
        let (u, v) = (rows(&u.0, "u", w).py()?, rows(&v.0, "v", w).py()?);
        let n = u.len() / w;
        let out = Tensor::f_empty([n as i64], (Kind::Float, Device::Cpu))
            .map_err(Error::from)
            .py()?;
        let ptr = out.data_ptr() as usize;
        py.allow_threads(|| {
            no_panic(|| {
                // SAFETY: as in `score`.
                let dst = match n {
                    0 => &mut [],
                    _ => unsafe { std::slice::from_raw_parts_mut(ptr as *mut f32, n) },
                };
                pairs::score_each(head, isa(), u, v, dst, threads)
            })
        })
        .py()?;
        tensor_to_py(py, out)
    }

    /// `(pairs, p)`: every pair with P(same) ≥ `threshold` as an `(m, 2)` int64 tensor of
    /// `(row_offset + i, j)` and its P(same), without the pairs `(k, k)` if `skip_diagonal`.
    #[allow(clippy::too_many_arguments)]
    fn matches(
        &self,
        py: Python<'_>,
        u: PyTensor,
        v: PyTensor,
        threshold: f32,
        row_offset: usize,
        skip_diagonal: bool,
        threads: usize,
    ) -> PyResult<(PyObject, PyObject)> {
        let (head, w) = (&self.0, self.0.width);
        let (u, v) = (rows(&u.0, "u", w).py()?, rows(&v.0, "v", w).py()?);
        let m = py
            .allow_threads(|| {
                no_panic(|| {
                    pairs::matches(
                        head,
                        isa(),
                        u,
                        v,
                        threshold,
                        row_offset,
                        skip_diagonal,
                        threads,
                    )
                })
            })
            .py()?;
        let pairs = Tensor::from_slice(&m.pairs).view([-1, 2]);
        Ok((
            tensor_to_py(py, pairs)?,
            tensor_to_py(py, Tensor::from_slice(&m.p))?,
        ))
    }
}
