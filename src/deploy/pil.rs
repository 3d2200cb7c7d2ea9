//! A decoded image as PIL holds it (its mode and samples) and PIL's `convert('RGB')` and
//! `convert('L')` from each mode (`Convert.c`), so that an image file reaches the model as
//! `PILImage.create` / `PILImageBW.create` give it to fastai.

/// The samples of an image in one of PIL's modes, row-major, channels interleaved.
#[derive(Debug)]
pub enum Pixels {
    /// "L" (and "1", stored as 0 or 255).
    L(Vec<u8>),
    /// "LA".
    La(Vec<u8>),
    /// "RGB".
    Rgb(Vec<u8>),
    /// "RGBA".
    Rgba(Vec<u8>),
    /// "P": indices into a palette of RGB entries (an index past its end is black, as in PIL).
    P(Vec<u8>, Vec<[u8; 3]>),
    /// "I;16": 16-bit grey.
    I16(Vec<u16>),
    /// "CMYK", as PIL stores it (a JPEG's Adobe-inverted samples already inverted back).
    Cmyk(Vec<u8>),
}

/// An image of `width` x `height` pixels.
#[derive(Debug)]
pub struct PilImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Pixels,
}

/// PIL's luma of an RGB pixel (`L24` in `Convert.c`): ITU-R 601-2 weights in 16-bit fixed point.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `a * b / 255` rounded as PIL's `MULDIV255` does.
fn muldiv255(a: u8, b: u8) -> u8 {
    let t = a as u32 * b as u32 + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// PIL's `cmyk2rgb`: each channel `(255 - k) - c * (255 - k) / 255`.
fn cmyk_to_rgb(p: &[u8]) -> [u8; 3] {
    let nk = 255 - p[3];
    [0, 1, 2].map(|i| nk - muldiv255(p[i], nk))
}

fn palette_entry(palette: &[[u8; 3]], i: u8) -> [u8; 3] {
    palette.get(i as usize).copied().unwrap_or([0, 0, 0])
}

impl PilImage {
    /// `convert('RGB')`: alpha is dropped (not composited), grey is repeated, 16-bit grey clipped
    /// to 255 (PIL clips, it does not scale).
    pub fn to_rgb(&self) -> Vec<u8> {
        let grey = |v: &mut dyn Iterator<Item = u8>| v.flat_map(|l| [l, l, l]).collect();
        match &self.pixels {
            Pixels::L(d) => grey(&mut d.iter().copied()),
            Pixels::La(d) => grey(&mut d.chunks_exact(2).map(|p| p[0])),
            Pixels::I16(d) => grey(&mut d.iter().map(|&v| v.min(255) as u8)),
            Pixels::Rgb(d) => d.clone(),
            Pixels::Rgba(d) => d.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
            Pixels::P(d, pal) => d.iter().flat_map(|&i| palette_entry(pal, i)).collect(),
            Pixels::Cmyk(d) => d.chunks_exact(4).flat_map(cmyk_to_rgb).collect(),
        }
    }

    /// `convert('L')`: PIL's 601 luma of colour, the grey of LA, 16-bit grey clipped to 255.
    pub fn to_l(&self) -> Vec<u8> {
        let rgb = |p: [u8; 3]| luma(p[0], p[1], p[2]);
        match &self.pixels {
            Pixels::L(d) => d.clone(),
            Pixels::La(d) => d.chunks_exact(2).map(|p| p[0]).collect(),
            Pixels::I16(d) => d.iter().map(|&v| v.min(255) as u8).collect(),
            Pixels::Rgb(d) => d.chunks_exact(3).map(|p| luma(p[0], p[1], p[2])).collect(),
            Pixels::Rgba(d) => d.chunks_exact(4).map(|p| luma(p[0], p[1], p[2])).collect(),
            Pixels::P(d, pal) => d.iter().map(|&i| rgb(palette_entry(pal, i))).collect(),
            Pixels::Cmyk(d) => d.chunks_exact(4).map(|p| rgb(cmyk_to_rgb(p))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_is_pils_fixed_point_601() {
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(10, 20, 30), 18); // (10*19595 + 20*38470 + 30*7471 + 32768) >> 16
        assert_eq!(luma(0, 0, 255), 29);
    }

    #[test]
    fn cmyk_white_and_black() {
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 0]), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 255]), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb(&[255, 0, 0, 0]), [0, 255, 255]);
    }
}
