//! JPEG decoded as PIL decodes it: libjpeg-turbo's decoder (here mozjpeg's copy of it, built from
//! source) with PIL's settings: the accurate integer IDCT (`JDCT_ISLOW`), fancy upsampling, output
//! as grey, RGB or CMYK by the number of components, and PIL's inversion of CMYK (it assumes
//! Adobe's convention for every four-component JPEG). libjpeg's warnings are ignored as PIL ignores
//! them, except a premature end of the file, which PIL reports as a truncated image.
use super::pil::{PilImage, Pixels};
use mozjpeg_sys::*;
use std::ffi::{c_int, c_ulong, CStr};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// A libjpeg error, carried out of the C code by unwinding (the library is built with -fexceptions).
struct Failure(String);

/// The text of the message libjpeg has just raised.
unsafe fn message(cinfo: &mut jpeg_common_struct) -> String {
    let buf = [0u8; 80];
    let err = &*cinfo.err;
    if let Some(format) = err.format_message {
        format(cinfo, &buf);
    }
    CStr::from_bytes_until_nul(&buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    // resume_unwind, unlike panic!, does not print a panic message.
    resume_unwind(Box::new(Failure(message(cinfo))));
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    let err = &mut *cinfo.err;
    if level < 0 {
        err.num_warnings += 1;
        if err.msg_code == JWRN_JPEG_EOF as c_int {
            resume_unwind(Box::new(Failure("the file is truncated".into())));
        }
    }
}

/// The image in `data`, or why not. `check` sees `(width, height)` before any pixel is allocated.
pub fn decode(
    data: &[u8],
    check: &dyn Fn(u32, u32) -> Result<(), String>,
) -> Result<PilImage, String> {
    // SAFETY: the structs are initialised by jpeg_std_error / jpeg_create_decompress before use,
    // `data` outlives the decompressor, and it is destroyed on every path, error or not.
    unsafe {
        let mut err: jpeg_error_mgr = std::mem::zeroed();
        let mut cinfo: jpeg_decompress_struct = std::mem::zeroed();
        let handler = jpeg_std_error(&mut err);
        handler.error_exit = Some(error_exit);
        handler.emit_message = Some(emit_message);
        cinfo.common.err = handler;
        let run = catch_unwind(AssertUnwindSafe(|| {
            jpeg_create_decompress(&mut cinfo);
            read(&mut cinfo, data, check)
        }));
        jpeg_destroy_decompress(&mut cinfo);
        match run {
            Ok(r) => r,
            Err(e) => match e.downcast::<Failure>() {
                Ok(f) => Err(f.0),
                Err(e) => resume_unwind(e),
            },
        }
    }
}

unsafe fn read(
    cinfo: &mut jpeg_decompress_struct,
    data: &[u8],
    check: &dyn Fn(u32, u32) -> Result<(), String>,
) -> Result<PilImage, String> {
    jpeg_mem_src(cinfo, data.as_ptr(), data.len() as c_ulong);
    jpeg_read_header(cinfo, 1);
    check(cinfo.image_width, cinfo.image_height)?;
    cinfo.out_color_space = match cinfo.num_components {
        1 => JCS_GRAYSCALE,
        3 => JCS_RGB,
        4 => JCS_CMYK,
        n => return Err(format!("a JPEG of {n} components (PIL reads 1, 3 or 4)")),
    };
    cinfo.dct_method = J_DCT_METHOD::JDCT_ISLOW;
    cinfo.do_fancy_upsampling = 1;
    jpeg_start_decompress(cinfo);
    let (w, h) = (cinfo.output_width, cinfo.output_height);
    let stride = w as usize * cinfo.output_components as usize;
    let mut buf = vec![0u8; stride * h as usize];
    while cinfo.output_scanline < h {
        let mut row = buf[cinfo.output_scanline as usize * stride..].as_mut_ptr();
        if jpeg_read_scanlines(cinfo, &mut row, 1) != 1 {
            return Err("libjpeg gave no row".into());
        }
    }
    // No jpeg_finish_decompress: PIL stops once every row is out, without looking for the EOI.
    let pixels = match cinfo.num_components {
        1 => Pixels::L(buf),
        3 => Pixels::Rgb(buf),
        _ => {
            buf.iter_mut().for_each(|v| *v = 255 - *v);
            Pixels::Cmyk(buf)
        }
    };
    Ok(PilImage {
        width: w,
        height: h,
        pixels,
    })
}
