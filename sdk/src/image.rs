//! Images for vision models (feature `image`): PNG and JPEG decoding to
//! 8-bit RGB, resizing, center cropping, and conversion to a normalised
//! `f32` tensor.
//!
//! Preprocessing is where an image model's accuracy is usually lost, so the
//! resize filters reproduce OpenCV's `cv2.resize` on 8-bit images (the same
//! kernels, fixed-point arithmetic and border handling), the tool most
//! vision models were trained with; see [`Filter`].
//!
//! ```
//! use glia_sdk::image::{ChannelOrder, Filter, Image, Layout, Normalize};
//!
//! let image = Image::from_rgb8(4, 2, vec![128; 4 * 2 * 3]).unwrap();
//! let tensor = image
//!     .resize_shorter_side(8, Filter::Lanczos4)
//!     .center_crop(8, 8)
//!     .unwrap()
//!     .to_tensor(Layout::Nchw, ChannelOrder::Rgb, &Normalize::IMAGENET);
//! assert_eq!(tensor.dims(), &[1, 3, 8, 8]);
//! ```

use std::fmt;
use std::io::Cursor;

use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use crate::nn::{Tensor, TensorType};

/// Largest width or height decoded.
pub const MAX_SIDE: u32 = 16_384;
/// Most pixels decoded (width × height): 64 Mi pixels, 192 MiB as RGB.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// An image that could not be decoded or used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError(String);

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImageError {}

impl From<ImageError> for crate::Error {
    /// A bad image is the client's: `400`.
    fn from(error: ImageError) -> Self {
        crate::Error::bad_request(error.0)
    }
}

/// An image file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
}

impl Format {
    /// The format of `bytes`, from their signature.
    pub fn of(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
            Some(Self::Jpeg)
        } else {
            None
        }
    }
}

/// How [`Image::resize`] samples, each as `cv2.resize` does on 8-bit
/// images (pixel centres aligned, edge pixels repeated past the border).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// The source pixel at `floor(x · scale)`: `INTER_NEAREST`, exactly.
    Nearest,
    /// 2×2 bilinear with 11-bit fixed-point weights: `INTER_LINEAR` within
    /// ±1 (OpenCV's vectorised pass rounds in steps, its scalar one as
    /// here, and which bytes take which depends on the CPU).
    Bilinear,
    /// 8×8 Lanczos (a = 4) with 11-bit fixed-point weights:
    /// `INTER_LANCZOS4`, exactly.
    Lanczos4,
}

/// The channel order of a tensor made from an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    Rgb,
    /// Blue, green, red: what models trained on OpenCV-loaded images expect.
    Bgr,
}

/// The layout of a tensor made from an image (with a batch of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[1, 3, height, width]`.
    Nchw,
    /// `[1, height, width, 3]`.
    Nhwc,
}

/// Per-channel normalisation: `(value · scale − mean[c]) / std[c]`, with `c`
/// counted in the tensor's [`ChannelOrder`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// ImageNet statistics on `[0, 1]` values.
    pub const IMAGENET: Self = Self {
        scale: 1.0 / 255.0,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// Values scaled to `[0, 1]`, nothing else.
    pub const UNIT: Self = Self {
        scale: 1.0 / 255.0,
        mean: [0.0; 3],
        std: [1.0; 3],
    };
}

/// An 8-bit RGB image, row by row.
#[derive(Clone, PartialEq, Eq)]
pub struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Image({}x{})", self.width, self.height)
    }
}

fn error(message: impl Into<String>) -> ImageError {
    ImageError(message.into())
}

impl Image {
    /// Decodes a PNG or JPEG image. Grey images become RGB; an alpha channel
    /// is composited over white. 16-bit PNG channels keep their high byte.
    pub fn decode(bytes: &[u8]) -> Result<Self, ImageError> {
        match Format::of(bytes) {
            Some(Format::Png) => decode_png(bytes),
            Some(Format::Jpeg) => decode_jpeg(bytes),
            None => Err(error("the image is neither PNG nor JPEG")),
        }
    }

    /// An image from `width × height` RGB pixels.
    pub fn from_rgb8(width: u32, height: u32, rgb: Vec<u8>) -> Result<Self, ImageError> {
        let want = u64::from(width) * u64::from(height) * 3;
        if width == 0 || height == 0 {
            return Err(error(format!("the image is {width}x{height}: empty")));
        }
        if rgb.len() as u64 != want {
            return Err(error(format!(
                "a {width}x{height} RGB image takes {want} bytes, got {}",
                rgb.len()
            )));
        }
        Ok(Self { width, height, rgb })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The pixels, `[r, g, b]` row by row.
    pub fn as_rgb8(&self) -> &[u8] {
        &self.rgb
    }

    /// The pixel at `(x, y)`.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let at = (y as usize * self.width as usize + x as usize) * 3;
        let p = self.rgb.get(at..at + 3)?;
        Some([*p.first()?, *p.get(1)?, *p.get(2)?])
    }

    /// The image resized to `width × height` (at least 1 × 1).
    pub fn resize(&self, width: u32, height: u32, filter: Filter) -> Self {
        let (width, height) = (width.max(1), height.max(1));
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        let rgb = match filter {
            Filter::Nearest => resize_nearest(self, width, height),
            Filter::Bilinear => resize_fixed(self, width, height, 2, bilinear_weights),
            Filter::Lanczos4 => resize_fixed(self, width, height, 8, lanczos4_weights),
        };
        Self { width, height, rgb }
    }

    /// The image resized so that its shorter side is `side`, keeping its
    /// aspect ratio (the other side rounded half to even, as Python's
    /// `round`).
    pub fn resize_shorter_side(&self, side: u32, filter: Filter) -> Self {
        let scale = f64::from(side) / f64::from(self.width.min(self.height));
        let scaled = |n: u32| (f64::from(n) * scale).round_ties_even() as u32;
        self.resize(scaled(self.width), scaled(self.height), filter)
    }

    /// The centred `width × height` part; an error when the image is
    /// smaller. An odd margin leaves the extra pixel on the right and bottom.
    pub fn center_crop(&self, width: u32, height: u32) -> Result<Self, ImageError> {
        if width > self.width || height > self.height || width == 0 || height == 0 {
            return Err(error(format!(
                "cannot crop {width}x{height} out of a {}x{} image",
                self.width, self.height
            )));
        }
        let left = (self.width - width) / 2;
        let top = (self.height - height) / 2;
        let row = self.width as usize * 3;
        let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
        for y in top..top + height {
            let start = y as usize * row + left as usize * 3;
            rgb.extend_from_slice(
                self.rgb
                    .get(start..start + width as usize * 3)
                    .unwrap_or_default(),
            );
        }
        Ok(Self { width, height, rgb })
    }

    /// The image turned a quarter turn clockwise.
    pub fn rotate90(&self) -> Self {
        let (w, h) = (self.width, self.height);
        self.remap(h, w, |x, y| (y, h - 1 - x))
    }

    /// The image turned upside down.
    pub fn rotate180(&self) -> Self {
        let (w, h) = (self.width, self.height);
        self.remap(w, h, |x, y| (w - 1 - x, h - 1 - y))
    }

    /// The image turned a quarter turn counter-clockwise.
    pub fn rotate270(&self) -> Self {
        let (w, h) = (self.width, self.height);
        self.remap(h, w, |x, y| (w - 1 - y, x))
    }

    /// A `width × height` image whose pixel `(x, y)` is this one's
    /// `source(x, y)`.
    fn remap(&self, width: u32, height: u32, source: impl Fn(u32, u32) -> (u32, u32)) -> Self {
        let mut rgb = Vec::with_capacity(self.rgb.len());
        for y in 0..height {
            for x in 0..width {
                let (sx, sy) = source(x, y);
                rgb.extend(self.pixel(sx, sy).unwrap_or_default());
            }
        }
        Self { width, height, rgb }
    }

    /// The image as an `f32` tensor in `layout`, channels in `order`,
    /// normalised.
    pub fn to_tensor(&self, layout: Layout, order: ChannelOrder, normalize: &Normalize) -> Tensor {
        let channels: [usize; 3] = match order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        // Per output channel: which RGB byte, and its scale and offset.
        let plan: [(usize, f32, f32, f32); 3] = [0, 1, 2].map(|c| {
            (
                channels.get(c).copied().unwrap_or(c),
                normalize.scale,
                normalize.mean.get(c).copied().unwrap_or(0.0),
                normalize.std.get(c).copied().unwrap_or(1.0),
            )
        });
        let value = |pixel: &[u8], (source, scale, mean, std): (usize, f32, f32, f32)| -> [u8; 4] {
            let v = f32::from(pixel.get(source).copied().unwrap_or(0));
            ((v * scale - mean) / std).to_le_bytes()
        };
        let mut data = Vec::with_capacity(self.rgb.len() * 4);
        let dims = match layout {
            Layout::Nchw => {
                for channel in plan {
                    for pixel in self.rgb.chunks_exact(3) {
                        data.extend(value(pixel, channel));
                    }
                }
                vec![1, 3, self.height, self.width]
            }
            Layout::Nhwc => {
                for pixel in self.rgb.chunks_exact(3) {
                    for channel in plan {
                        data.extend(value(pixel, channel));
                    }
                }
                vec![1, self.height, self.width, 3]
            }
        };
        Tensor::from_parts(dims, TensorType::F32, data)
    }
}

fn check_size(width: u32, height: u32) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(error(format!("the image is {width}x{height}: empty")));
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(error(format!(
            "the image is {width}x{height}; at most {MAX_SIDE} pixels a side and {MAX_PIXELS} in all"
        )));
    }
    Ok(())
}

fn decode_png(bytes: &[u8]) -> Result<Image, ImageError> {
    let limits = png::Limits {
        bytes: usize::try_from(MAX_PIXELS * 8).unwrap_or(usize::MAX),
    };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), limits);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| error(format!("decoding the PNG image: {e}")))?;
    let (width, height) = (reader.info().width, reader.info().height);
    check_size(width, height)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| error("the PNG image is too large"))?;
    let mut buffer = vec![0; size];
    let frame = reader
        .next_frame(&mut buffer)
        .map_err(|e| error(format!("decoding the PNG image: {e}")))?;
    buffer.truncate(frame.buffer_size());
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(error("the PNG palette was not expanded"));
        }
    };
    let pixels = width as usize * height as usize;
    // Rows can be padded beyond width × channels; take each row's pixels.
    let row = frame.line_size;
    let mut packed = Vec::with_capacity(pixels * channels);
    for y in 0..height as usize {
        let start = y * row;
        packed.extend_from_slice(
            buffer
                .get(start..start + width as usize * channels)
                .ok_or_else(|| error("the PNG image data is short"))?,
        );
    }
    Image::from_rgb8(width, height, to_rgb(&packed, channels))
}

fn decode_jpeg(bytes: &[u8]) -> Result<Image, ImageError> {
    let options = DecoderOptions::default()
        .set_max_width(MAX_SIDE as usize)
        .set_max_height(MAX_SIDE as usize)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| error(format!("decoding the JPEG image: {e:?}")))?;
    let info = decoder
        .info()
        .ok_or_else(|| error("decoding the JPEG image: no header"))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_size(width, height)?;
    let pixels = decoder
        .decode()
        .map_err(|e| error(format!("decoding the JPEG image: {e:?}")))?;
    let channels = decoder
        .output_colorspace()
        .map_or(3, |colorspace| colorspace.num_components());
    Image::from_rgb8(width, height, to_rgb(&pixels, channels))
}

/// Packed 1-4 channel pixels (grey, grey+alpha, RGB, RGBA) as RGB; alpha
/// composited over white.
fn to_rgb(pixels: &[u8], channels: usize) -> Vec<u8> {
    let over_white = |v: u8, alpha: u8| -> u8 {
        let (v, a) = (u32::from(v), u32::from(alpha));
        u8::try_from((v * a + 255 * (255 - a) + 127) / 255).unwrap_or(u8::MAX)
    };
    match channels {
        3 => pixels.to_vec(),
        1 => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        2 => pixels
            .chunks_exact(2)
            .flat_map(|p| {
                let g = over_white(
                    p.first().copied().unwrap_or(0),
                    p.get(1).copied().unwrap_or(255),
                );
                [g, g, g]
            })
            .collect(),
        _ => pixels
            .chunks_exact(channels.max(1))
            .flat_map(|p| {
                let alpha = p.get(3).copied().unwrap_or(255);
                [0, 1, 2].map(|c| over_white(p.get(c).copied().unwrap_or(0), alpha))
            })
            .collect(),
    }
}

/// `INTER_NEAREST`: source index `floor(d · scale)`.
fn resize_nearest(image: &Image, width: u32, height: u32) -> Vec<u8> {
    let scale_x = 1.0 / (f64::from(width) / f64::from(image.width));
    let scale_y = 1.0 / (f64::from(height) / f64::from(image.height));
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for dy in 0..height {
        let sy = ((f64::from(dy) * scale_y).floor() as u32).min(image.height - 1);
        for dx in 0..width {
            let sx = ((f64::from(dx) * scale_x).floor() as u32).min(image.width - 1);
            rgb.extend(image.pixel(sx, sy).unwrap_or_default());
        }
    }
    rgb
}

/// Fixed-point weights are scaled by this (OpenCV's `INTER_RESIZE_COEF_SCALE`).
const COEF_SCALE: f32 = 2048.0;
/// Bits the two fixed-point passes leave to shift out.
const COEF_SHIFT: u32 = 22;

/// Bilinear weights at fraction `f`.
fn bilinear_weights(f: f32, out: &mut [f32]) {
    if let [a, b] = out {
        *a = 1.0 - f;
        *b = f;
    }
}

/// OpenCV's `interpolateLanczos4`: the 8 Lanczos (a = 4) weights at
/// fraction `x`, normalised to sum 1.
fn lanczos4_weights(x: f32, out: &mut [f32]) {
    use std::f64::consts::PI;
    const S45: f64 = std::f64::consts::FRAC_1_SQRT_2;
    const CS: [[f64; 2]; 8] = [
        [1.0, 0.0],
        [-S45, -S45],
        [0.0, 1.0],
        [S45, -S45],
        [-1.0, 0.0],
        [S45, S45],
        [0.0, -1.0],
        [-S45, S45],
    ];
    let y0 = -f64::from(x + 3.0) * PI * 0.25;
    let (s0, c0) = (y0.sin(), y0.cos());
    let mut sum = 0.0f32;
    for (i, (coefficient, cs)) in out.iter_mut().zip(CS).enumerate() {
        let offset = x + 3.0 - i as f32;
        *coefficient = if offset.abs() >= 1e-6 {
            let y = -f64::from(offset) * PI * 0.25;
            ((cs[0] * s0 + cs[1] * c0) / (y * y)) as f32
        } else {
            1e30
        };
        sum += *coefficient;
    }
    let inverse = 1.0 / sum;
    out.iter_mut().for_each(|c| *c *= inverse);
}

/// For each destination index, the first source tap (may be negative or
/// past the end; clamped when read) and the `taps` fixed-point weights.
fn axis(
    source: u32,
    destination: u32,
    taps: usize,
    weights: fn(f32, &mut [f32]),
) -> Vec<(i64, Vec<i32>)> {
    // As OpenCV computes it: the inverse of the inverse scale.
    let scale = 1.0 / (f64::from(destination) / f64::from(source));
    let first_offset = taps as i64 / 2 - 1;
    let mut buffer = vec![0.0f32; taps];
    (0..destination)
        .map(|d| {
            let mut f = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            f -= s as f32;
            if taps == 2 {
                // INTER_LINEAR clamps the sample point itself at the edges.
                if s < 0 {
                    (s, f) = (0, 0.0);
                }
                if s >= i64::from(source) - 1 {
                    (s, f) = (i64::from(source) - 1, 0.0);
                }
            }
            weights(f, &mut buffer);
            let fixed = buffer
                .iter()
                .map(|&w| (w * COEF_SCALE).round_ties_even() as i32)
                .collect();
            (s - first_offset, fixed)
        })
        .collect()
}

/// A separable fixed-point resize as OpenCV does it for 8-bit images:
/// horizontal pass into integers, vertical pass, round and shift, clamp.
fn resize_fixed(
    image: &Image,
    width: u32,
    height: u32,
    taps: usize,
    weights: fn(f32, &mut [f32]),
) -> Vec<u8> {
    let xs = axis(image.width, width, taps, weights);
    let ys = axis(image.height, height, taps, weights);
    let (sw, sh) = (i64::from(image.width), i64::from(image.height));
    let clamp = |v: i64, n: i64| v.clamp(0, n - 1) as usize;

    // Horizontal pass over every source row.
    let row_len = width as usize * 3;
    let mut rows = vec![0i32; image.height as usize * row_len];
    for (y, out) in rows.chunks_exact_mut(row_len).enumerate() {
        let source = image
            .rgb
            .get(y * image.width as usize * 3..(y + 1) * image.width as usize * 3)
            .unwrap_or_default();
        for ((first, fixed), pixel) in xs.iter().zip(out.chunks_exact_mut(3)) {
            for (c, value) in pixel.iter_mut().enumerate() {
                // At most 255 · 8 · 2048 in magnitude: fits.
                *value = fixed
                    .iter()
                    .enumerate()
                    .map(|(k, &w)| {
                        let sx = clamp(first + k as i64, sw);
                        i32::from(source.get(sx * 3 + c).copied().unwrap_or(0)) * w
                    })
                    .sum();
            }
        }
    }

    // Vertical pass.
    let delta = 1i64 << (COEF_SHIFT - 1);
    let mut rgb = Vec::with_capacity(height as usize * row_len);
    for (first, fixed) in &ys {
        for x in 0..row_len {
            let sum: i64 = fixed
                .iter()
                .enumerate()
                .map(|(k, &w)| {
                    let sy = clamp(first + k as i64, sh);
                    i64::from(rows.get(sy * row_len + x).copied().unwrap_or(0)) * i64::from(w)
                })
                .sum();
            rgb.push(((sum + delta) >> COEF_SHIFT).clamp(0, 255) as u8);
        }
    }
    rgb
}

#[cfg(test)]
mod tests;
