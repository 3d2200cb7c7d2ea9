//! Image files read as PIL's `Image.open(f).load()` reads them (by their content, not their name):
//! PNG with its stored samples and mode, JPEG through libjpeg-turbo, BMP. Orientation tags are not
//! applied (fastai's `PILImage.create` does not apply them), and an image larger than PIL's
//! decompression-bomb limit is refused from its header, before its pixels are allocated.
use super::pil::{PilImage, Pixels};
use crate::error::Error;
use std::io::Cursor;
use std::path::Path;

/// A decoder's answer: the image, or why it cannot be read.
type Decoded<T> = std::result::Result<T, String>;

/// PIL's `DecompressionBombError` limit: twice `Image.MAX_IMAGE_PIXELS` (89,478,485).
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// The image file at `path`, as PIL holds it after opening it.
pub fn read(path: &Path) -> crate::Result<PilImage> {
    let fail = |why: String| Error::Value(format!("cannot read image {}: {why}", path.display()));
    let data = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let check = |w: u32, h: u32| -> Decoded<()> {
        let n = w.max(1) as u64 * h.max(1) as u64;
        if n > MAX_PIXELS {
            return Err(format!(
                "its {w}x{h} ({n} pixels) exceed the limit of {MAX_PIXELS} pixels (PIL's decompression-bomb limit)"
            ));
        }
        Ok(())
    };
    let decoded = if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        png(&data, &check)
    } else if data.starts_with(&[0xff, 0xd8, 0xff]) {
        super::jpeg::decode(&data, &check)
    } else if data.starts_with(b"BM") {
        bmp(&data, &check)
    } else {
        Err("not a PNG, JPEG or BMP file".into())
    };
    decoded.map_err(fail)
}

/// A PNG in PIL's mode for it (`PngImagePlugin._MODES`): 16-bit colour keeps its high bytes,
/// 16-bit grey stays 16-bit ("I;16"), grey of 1, 2 or 4 bits is scaled to 0..255, palettes stay
/// indices; transparency (tRNS) does not change the samples.
fn png(data: &[u8], check: &dyn Fn(u32, u32) -> Decoded<()>) -> Decoded<PilImage> {
    use png::{BitDepth, ColorType};
    let limits = png::Limits {
        bytes: usize::MAX, // the pixel count is bounded below instead
    };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(data), limits);
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let (w, h) = reader.info().size();
    check(w, h)?;
    let (color, depth) = (reader.info().color_type, reader.info().bit_depth);
    let palette = reader.info().palette.as_ref().map(|p| {
        p.chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect::<Vec<_>>()
    });
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "its size does not fit in memory".to_string())?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let line = info.line_size;
    let bits = depth as usize;
    let pixels = match (color, depth) {
        (ColorType::Grayscale, BitDepth::Sixteen) => Pixels::I16(
            buf.chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .collect(),
        ),
        (ColorType::Grayscale, _) => {
            let scale = 255 / ((1u16 << bits) - 1) as u8;
            Pixels::L(unpack(&buf, line, w, h, bits, scale))
        }
        (ColorType::Indexed, _) => Pixels::P(
            unpack(&buf, line, w, h, bits, 1),
            palette.ok_or_else(|| "a palette image without a palette".to_string())?,
        ),
        (_, BitDepth::Sixteen) => {
            let high: Vec<u8> = buf.chunks_exact(2).map(|b| b[0]).collect();
            match color {
                ColorType::Rgb => Pixels::Rgb(high),
                ColorType::Rgba => Pixels::Rgba(high),
                _ => Pixels::La(high), // PIL's "RGBA" from "LA;16B": grey repeated, same pixels
            }
        }
        (ColorType::Rgb, _) => Pixels::Rgb(buf),
        (ColorType::Rgba, _) => Pixels::Rgba(buf),
        (ColorType::GrayscaleAlpha, _) => Pixels::La(buf),
    };
    Ok(PilImage {
        width: w,
        height: h,
        pixels,
    })
}

/// One byte per pixel from rows of `line` bytes packing `bits`-bit samples (most significant first),
/// each multiplied by `scale`.
fn unpack(buf: &[u8], line: usize, w: u32, h: u32, bits: usize, scale: u8) -> Vec<u8> {
    if bits == 8 {
        return buf.to_vec();
    }
    let per_byte = 8 / bits;
    let mask = ((1u16 << bits) - 1) as u8;
    (0..h as usize)
        .flat_map(|y| {
            let row = &buf[y * line..(y + 1) * line];
            (0..w as usize).map(move |x| {
                let shift = 8 - bits * (x % per_byte + 1);
                ((row[x / per_byte] >> shift) & mask) * scale
            })
        })
        .collect()
}

/// A BMP through the image crate (its colour samples are PIL's; colour tables come out expanded,
/// which `convert` maps to the same RGB and luma as PIL's palette).
fn bmp(data: &[u8], check: &dyn Fn(u32, u32) -> Decoded<()>) -> Decoded<PilImage> {
    use image::{DynamicImage, ImageDecoder};
    let decoder =
        image::codecs::bmp::BmpDecoder::new(Cursor::new(data)).map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions();
    check(w, h)?;
    let pixels = match DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())? {
        DynamicImage::ImageLuma8(i) => Pixels::L(i.into_raw()),
        DynamicImage::ImageLumaA8(i) => Pixels::La(i.into_raw()),
        DynamicImage::ImageRgba8(i) => Pixels::Rgba(i.into_raw()),
        other => Pixels::Rgb(other.to_rgb8().into_raw()),
    };
    Ok(PilImage {
        width: w,
        height: h,
        pixels,
    })
}
