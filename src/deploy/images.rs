//! fastai's validation transforms on an image file, in Rust: `PILImage.create` (PIL's
//! `convert('RGB')`, or `PILImageBW.create`'s `convert('L')` for a one-channel model; `decode`), `Resize(size, method, pad_mode)` with its centre crop or pad and PIL's
//! bilinear resampling (its fixed-point arithmetic, two rounded passes), `ToTensor`,
//! `IntToFloatTensor` (/255) and `Normalize` with the model's statistics.
use super::decode;
use super::model_file::ModelInfo;
use crate::bail;
use crate::error::Result;
use image::imageops;
use image::{ImageBuffer, Luma, Pixel, Rgb};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// How an exported model's inputs are prepared.
#[derive(Clone, Debug)]
pub struct Preprocess {
    pub channels: i64,
    /// Target `(w, h)`, or `None`: the image's own size (the model was exported without `dls`).
    pub size: Option<(u32, u32)>,
    pub method: Method,
    pub pad: PadMode,
    pub stats: Option<(Vec<f32>, Vec<f32>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Crop,
    Squish,
    Pad,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    Zeros,
    Border,
    Reflection,
}

impl Preprocess {
    pub fn of(info: &ModelInfo) -> Result<Preprocess> {
        if !matches!(info.n_in, 1 | 3) {
            bail!(
                Value,
                "the model takes {} input channels; image files give 1 (luma) or 3 (RGB)",
                info.n_in
            );
        }
        let (size, method, pad) = match &info.input {
            None => (None, Method::Crop, PadMode::Reflection),
            Some(i) => {
                let method = match i.method.as_str() {
                    "crop" => Method::Crop,
                    "squish" => Method::Squish,
                    "pad" => Method::Pad,
                    m => bail!(
                        Value,
                        "input.method: expected crop, squish or pad, got {m:?}"
                    ),
                };
                let pad = match i.pad_mode.as_str() {
                    "zeros" => PadMode::Zeros,
                    "border" => PadMode::Border,
                    "reflection" => PadMode::Reflection,
                    m => bail!(
                        Value,
                        "input.pad_mode: expected zeros, border or reflection, got {m:?}"
                    ),
                };
                if i.size.contains(&0) {
                    bail!(
                        Value,
                        "input.size: expected a positive [h, w], got {:?}",
                        i.size
                    );
                }
                (Some((i.size[1], i.size[0])), method, pad)
            }
        };
        if let Some(s) = &info.stats {
            let n = info.n_in as usize;
            if s.mean.len() != n || s.std.len() != n || s.std.contains(&0.0) {
                bail!(
                    Value,
                    "stats: expected {n} means and {n} non-zero stds for a {n}-channel model, got {:?} and {:?}",
                    s.mean,
                    s.std
                );
            }
        }
        let stats = info.stats.as_ref().map(|s| {
            let f = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<_>>();
            (f(&s.mean), f(&s.std))
        });
        Ok(Preprocess {
            channels: info.n_in,
            size,
            method,
            pad,
            stats,
        })
    }

    /// The image file at `path` as a `(channels, h, w)` float tensor, as the model's `dls` gives it.
    pub fn load(&self, path: &Path) -> Result<Tensor> {
        let img = decode::read(path)?;
        let (w, h) = (img.width, img.height);
        let t = if self.channels == 1 {
            self.to_tensor(&ImageBuffer::<Luma<u8>, _>::from_raw(w, h, img.to_l()))?
        } else {
            self.to_tensor(&ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, img.to_rgb()))?
        };
        let t = t.f_to_kind(Kind::Float)?.f_div_scalar(255.0)?;
        match &self.stats {
            None => Ok(t),
            Some((mean, std)) => {
                let c = self.channels;
                let shape = [c, 1, 1];
                let mean = Tensor::from_slice(&mean[..c as usize]).f_view(shape)?;
                let std = Tensor::from_slice(&std[..c as usize]).f_view(shape)?;
                Ok(t.f_sub(&mean)?.f_div(&std)?)
            }
        }
    }

    fn to_tensor<P>(&self, img: &Option<ImageBuffer<P, Vec<u8>>>) -> Result<Tensor>
    where
        P: Pixel<Subpixel = u8> + 'static,
    {
        let Some(img) = img else {
            bail!(Value, "an image's samples do not match its size"); // not reached: decode sizes them
        };
        let img = match self.size {
            Some(size) => resize(img, size, self.method, self.pad),
            None => img.clone(),
        };
        let (w, h) = img.dimensions();
        let c = P::CHANNEL_COUNT as i64;
        let hwc = Tensor::from_slice(img.as_raw()).f_view([h as i64, w as i64, c])?;
        Ok(hwc
            .f_permute([2, 0, 1])?
            .f_contiguous()?
            .f_to_device(Device::Cpu)?)
    }
}

/// fastai's `Resize.encodes` on a PIL image, with the validation set's centre (`pcts` 0.5).
fn resize<P>(
    img: &ImageBuffer<P, Vec<u8>>,
    size: (u32, u32),
    method: Method,
    pad: PadMode,
) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let (w, h) = img.dimensions();
    let (sw, sh) = size;
    let (crop, tl) = match method {
        Method::Squish => ((w as i64, h as i64), (0, 0)),
        Method::Crop | Method::Pad => {
            let (rw, rh) = (w as f64 / sw as f64, h as f64 / sh as f64);
            let smaller = rw < rh;
            let m = if smaller == (method == Method::Crop) {
                rw
            } else {
                rh
            };
            let crop = ((m * sw as f64) as i64, (m * sh as f64) as i64);
            let tl = (
                (0.5 * (w as i64 - crop.0) as f64) as i64,
                (0.5 * (h as i64 - crop.1) as f64) as i64,
            );
            (crop, tl)
        }
    };
    let boxed = crop_pad(img, crop, tl, pad);
    if boxed.dimensions() == (sw, sh) {
        return boxed; // PIL's resize to the same size is a copy
    }
    let c = P::CHANNEL_COUNT as usize;
    let (bw, bh) = boxed.dimensions();
    let wide = pass(
        boxed.as_raw(),
        (bw as usize, bh as usize),
        c,
        sw as usize,
        true,
    );
    let out = pass(&wide, (sw as usize, bh as usize), c, sh as usize, false);
    ImageBuffer::from_raw(sw, sh, out).unwrap_or_else(|| ImageBuffer::new(sw, sh))
}

/// Bits of PIL's fixed-point resampling coefficients (`PRECISION_BITS` in `Resample.c`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's bilinear (triangle) resampling coefficients from `n_in` to `n_out` pixels
/// (`precompute_coeffs` and `normalize_coeffs_8bpc`): per output pixel, its first source pixel and
/// fixed-point weights. The filter widens when shrinking, so every source pixel counts (antialiasing).
fn coefficients(n_in: usize, n_out: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = n_in as f64 / n_out as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    (0..n_out)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(n_in as i64) as usize - xmin;
            let w: Vec<f64> = (0..xmax)
                .map(|x| {
                    let t = ((x + xmin) as f64 - center + 0.5) / filterscale;
                    (1.0 - t.abs()).max(0.0)
                })
                .collect();
            let total: f64 = w.iter().sum();
            let one = (1u64 << PRECISION_BITS) as f64;
            let k = w
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    if w < 0.0 {
                        (w * one - 0.5) as i32
                    } else {
                        (w * one + 0.5) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

/// One PIL resampling pass over interleaved 8-bit pixels of `size` (w, h): along rows when
/// `horizontal` (to `n_out` columns), else along columns (to `n_out` rows), rounded to 8 bits.
fn pass(src: &[u8], (w, h): (usize, usize), c: usize, n_out: usize, horizontal: bool) -> Vec<u8> {
    let coeffs = coefficients(if horizontal { w } else { h }, n_out);
    let (ow, oh) = if horizontal { (n_out, h) } else { (w, n_out) };
    let mut out = vec![0u8; ow * oh * c];
    for y in 0..oh {
        for x in 0..ow {
            let (first, k) = &coeffs[if horizontal { x } else { y }];
            for ch in 0..c {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &kk) in k.iter().enumerate() {
                    let (sx, sy) = if horizontal {
                        (first + i, y)
                    } else {
                        (x, first + i)
                    };
                    ss += src[(sy * w + sx) * c + ch] as i64 * kk as i64;
                }
                out[(y * ow + x) * c + ch] = (ss >> PRECISION_BITS).clamp(0, 255) as u8;
            }
        }
    }
    out
}

/// fastai's `_do_crop_pad`: the `crop` box at `tl` (which may reach outside), padded by `pad`.
fn crop_pad<P>(
    img: &ImageBuffer<P, Vec<u8>>,
    crop: (i64, i64),
    tl: (i64, i64),
    pad: PadMode,
) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let (w, h) = (img.width() as i64, img.height() as i64);
    let inside = tl.0 >= 0 && tl.1 >= 0 && tl.0 + crop.0 <= w && tl.1 + crop.1 <= h;
    if inside {
        return imageops::crop_imm(img, tl.0 as u32, tl.1 as u32, crop.0 as u32, crop.1 as u32)
            .to_image();
    }
    // torchvision's pad of the cropped part: each output pixel maps to a source pixel (or zero).
    ImageBuffer::from_fn(crop.0.max(1) as u32, crop.1.max(1) as u32, |x, y| {
        let sx = source(tl.0 + x as i64, w, pad);
        let sy = source(tl.1 + y as i64, h, pad);
        match (sx, sy) {
            (Some(sx), Some(sy)) => *img.get_pixel(sx as u32, sy as u32),
            _ => P::from_slice(&[0; 4][..P::CHANNEL_COUNT as usize]).to_owned(),
        }
    })
}

/// The source index of position `i` in a padded line of `n` pixels (`None`: a zero).
fn source(i: i64, n: i64, pad: PadMode) -> Option<i64> {
    if (0..n).contains(&i) {
        return Some(i);
    }
    match pad {
        PadMode::Zeros => None,
        PadMode::Border => Some(i.clamp(0, n - 1)),
        PadMode::Reflection if n == 1 => Some(0),
        PadMode::Reflection => {
            // numpy's 'reflect' (the edge is not repeated), periodic with 2(n - 1).
            let p = 2 * (n - 1);
            let k = i.rem_euclid(p);
            Some(if k < n { k } else { p - k })
        }
    }
}

/// A batch of image files, as one `(n, c, h, w)` tensor; every image must come out at one size.
pub fn batch(pre: &Preprocess, paths: &[std::path::PathBuf]) -> Result<Tensor> {
    let ts = paths
        .iter()
        .map(|p| pre.load(p))
        .collect::<Result<Vec<_>>>()?;
    if let Some(first) = ts.first() {
        if let Some((i, t)) = ts
            .iter()
            .enumerate()
            .find(|(_, t)| t.size() != first.size())
        {
            bail!(
                Shape,
                "{} is {:?} after its transforms, {} is {:?}: the model was exported without a Resize, so images must share one size",
                paths[i].display(),
                t.size(),
                paths[0].display(),
                first.size()
            );
        }
    }
    Ok(Tensor::f_stack(&ts, 0)?)
}
