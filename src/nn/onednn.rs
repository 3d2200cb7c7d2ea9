//! oneDNN operators that tch does not bind, through siamese-rs's addition to the torch-sys shim
//! (`third_party/torch-sys/libtch/siamese_ops.cpp`).
use crate::error::{Error, Result};
use std::ffi::CStr;
use tch::Tensor;
use torch_sys::C_tensor;

/// `mkldnn::_convolution_pointwise`: oneDNN's convolution of a dense input with a weight
/// prepacked for that input's size (`torch._C._nn.mkldnn_reorder_conv2d_weight(..., input_size)`),
/// answering in the input's memory format: unlike `mkldnn_convolution`, a channels-last input stays
/// channels-last.
pub(crate) fn conv_pointwise(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    padding: &[i64],
    stride: &[i64],
    dilation: &[i64],
    groups: i64,
) -> Result<Tensor> {
    let ptr = |t: Option<&Tensor>| t.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut C_tensor);
    let len = |v: &[i64]| v.len() as std::os::raw::c_int;
    // SAFETY: every tensor pointer is a live tensor borrowed for the call (the bias may be null,
    // which the shim takes as None), and each slice outlives the call with its length passed beside it; the shim
    // catches C++ exceptions and reports them through `get_and_reset_last_err`.
    let out = unsafe {
        torch_sys::sr_convolution_pointwise(
            ptr(Some(x)),
            ptr(Some(w)),
            ptr(b),
            padding.as_ptr(),
            len(padding),
            stride.as_ptr(),
            len(stride),
            dilation.as_ptr(),
            len(dilation),
            groups,
        )
    };
    last_error()?;
    if out.is_null() {
        return Err(Error::Torch(
            "mkldnn::_convolution_pointwise returned no tensor".into(),
        ));
    }
    // SAFETY: a non-null result is a tensor the shim allocated for us to own.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// The shim's pending error, if any (the string is `strdup`ed: freed here).
fn last_error() -> Result<()> {
    // SAFETY: the shim returns null or a `strdup`ed C string that nothing else frees.
    let err = unsafe { torch_sys::get_and_reset_last_err() };
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: `err` is a valid NUL-terminated string until freed just below.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated by `strdup` (malloc), freed once.
    unsafe { libc::free(err.cast()) };
    Err(tch::TchError::Torch(msg).into()) // without libtorch's C++ backtrace
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    fn channels_last(x: Tensor) -> Tensor {
        x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn pointwise_convolution_is_conv2d_and_keeps_channels_last() {
        tch::manual_seed(0);
        let x = channels_last(Tensor::randn(
            [2, 16, 9, 9],
            (Kind::Float, tch::Device::Cpu),
        ));
        let w = Tensor::randn([32, 16, 3, 3], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::randn([32], (Kind::Float, tch::Device::Cpu));
        let (pad, stride, dil) = ([1, 1], [2, 2], [1, 1]);
        let packed = w.to_mkldnn().mkldnn_reorder_conv2d_weight(
            pad,
            stride,
            dil,
            1,
            Some([2, 16, 9, 9].as_slice()),
        );
        let want = x.conv2d(&w, Some(&b), stride, pad, dil, 1);
        let got = conv_pointwise(&x, &packed, Some(&b), &pad, &stride, &dil, 1).unwrap();
        assert!(max_diff(&got, &want) < 1e-4, "{}", max_diff(&got, &want));
        let out_strides = got.stride();
        assert_eq!(
            out_strides[1], 1,
            "channels-last output, strides {out_strides:?}"
        );
        // A NaN in the input reaches the output, as in conv2d.
        let _ = x.narrow(2, 4, 1).narrow(3, 4, 1).fill_(f64::NAN);
        let got = conv_pointwise(&x, &packed, Some(&b), &pad, &stride, &dil, 1).unwrap();
        let want = x.conv2d(&w, Some(&b), stride, pad, dil, 1);
        assert!(got.isnan().equal(&want.isnan()) && want.isnan().any().int64_value(&[]) == 1);
    }

    #[test]
    fn a_refused_convolution_is_an_error() {
        let x = Tensor::randn([1, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
        let w = Tensor::randn([4, 5, 3, 3], (Kind::Float, tch::Device::Cpu)).to_mkldnn();
        let err = conv_pointwise(&x, &w, None, &[1, 1], &[1, 1], &[1, 1], 1).unwrap_err();
        assert!(matches!(err, Error::Torch(_)), "{err:?}");
        // The error was taken: the next call starts clean.
        assert!(last_error().is_ok());
    }
}
