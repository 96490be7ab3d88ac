use super::*;

/// What `sdk/testdata/make.py` wrote: a source image and OpenCV's resizes
/// of it.
const SOURCE: &[u8] = include_bytes!("../../testdata/source.png");
const RESIZED: &[(&str, Filter, u32, u32, &[u8])] = &[
    (
        "nearest",
        Filter::Nearest,
        16,
        11,
        include_bytes!("../../testdata/nearest-16x11.png"),
    ),
    (
        "nearest",
        Filter::Nearest,
        50,
        31,
        include_bytes!("../../testdata/nearest-50x31.png"),
    ),
    (
        "nearest",
        Filter::Nearest,
        37,
        8,
        include_bytes!("../../testdata/nearest-37x8.png"),
    ),
    (
        "bilinear",
        Filter::Bilinear,
        16,
        11,
        include_bytes!("../../testdata/bilinear-16x11.png"),
    ),
    (
        "bilinear",
        Filter::Bilinear,
        50,
        31,
        include_bytes!("../../testdata/bilinear-50x31.png"),
    ),
    (
        "bilinear",
        Filter::Bilinear,
        37,
        8,
        include_bytes!("../../testdata/bilinear-37x8.png"),
    ),
    (
        "lanczos4",
        Filter::Lanczos4,
        16,
        11,
        include_bytes!("../../testdata/lanczos4-16x11.png"),
    ),
    (
        "lanczos4",
        Filter::Lanczos4,
        50,
        31,
        include_bytes!("../../testdata/lanczos4-50x31.png"),
    ),
    (
        "lanczos4",
        Filter::Lanczos4,
        37,
        8,
        include_bytes!("../../testdata/lanczos4-37x8.png"),
    ),
];
const PHOTO_JPEG: &[u8] = include_bytes!("../../testdata/photo.jpg");
const PHOTO_DECODED: &[u8] = include_bytes!("../../testdata/photo-decoded.png");

fn png(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    let mut writer = encoder.write_header().expect("header");
    writer.write_image_data(data).expect("data");
    writer.finish().expect("finish");
    out
}

#[test]
fn resizes_match_opencv() {
    let source = Image::decode(SOURCE).expect("source");
    assert_eq!((source.width(), source.height()), (37, 23));
    for &(name, filter, width, height, want) in RESIZED {
        let want = Image::decode(want).expect("reference");
        let got = source.resize(width, height, filter);
        assert_eq!((got.width(), got.height()), (width, height));
        let differing: Vec<usize> = got
            .as_rgb8()
            .iter()
            .zip(want.as_rgb8())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(ix, _)| ix)
            .collect();
        if filter == Filter::Bilinear {
            // OpenCV's own vectorised and scalar paths differ by one.
            let most = got
                .as_rgb8()
                .iter()
                .zip(want.as_rgb8())
                .map(|(a, b)| a.abs_diff(*b))
                .max();
            assert!(most <= Some(1), "{name} {width}x{height}: off by {most:?}");
            continue;
        }
        assert!(
            differing.is_empty(),
            "{name} {width}x{height}: {} of {} bytes differ from cv2.resize, first at {:?}",
            differing.len(),
            got.as_rgb8().len(),
            differing.first()
        );
    }
}

#[test]
fn jpeg_decodes_like_libjpeg() {
    let got = Image::decode(PHOTO_JPEG).expect("jpeg");
    let want = Image::decode(PHOTO_DECODED).expect("png");
    assert_eq!((got.width(), got.height()), (64, 48));
    let diffs: Vec<u8> = got
        .as_rgb8()
        .iter()
        .zip(want.as_rgb8())
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
    // Decoders may round the chroma upsampling differently by a step or two.
    assert!(max <= 3 && mean < 0.5, "max {max}, mean {mean}");
}

#[test]
fn grey_alpha_and_16_bit_pngs_become_rgb() {
    let grey = png(
        2,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0, 200],
    );
    assert_eq!(
        Image::decode(&grey).expect("grey").as_rgb8(),
        [0, 0, 0, 200, 200, 200]
    );
    // Transparent black over white is white; opaque stays.
    let rgba = png(
        2,
        1,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &[0, 0, 0, 0, 10, 20, 30, 255],
    );
    assert_eq!(
        Image::decode(&rgba).expect("rgba").as_rgb8(),
        [255, 255, 255, 10, 20, 30]
    );
    let grey_alpha = png(
        1,
        1,
        png::ColorType::GrayscaleAlpha,
        png::BitDepth::Eight,
        &[0, 128],
    );
    assert_eq!(
        Image::decode(&grey_alpha).expect("la").as_rgb8(),
        [127, 127, 127]
    );
    let deep = png(
        1,
        1,
        png::ColorType::Rgb,
        png::BitDepth::Sixteen,
        &[1, 2, 3, 4, 5, 6],
    );
    assert_eq!(Image::decode(&deep).expect("16-bit").as_rgb8(), [1, 3, 5]);
}

#[test]
fn bad_images_say_why() {
    let error = Image::decode(b"GIF89a").expect_err("gif");
    assert_eq!(error.to_string(), "the image is neither PNG nor JPEG");
    let error = Image::decode(&SOURCE[..100]).expect_err("truncated");
    assert!(
        error.to_string().starts_with("decoding the PNG image"),
        "{error}"
    );
    let error = Image::decode(&PHOTO_JPEG[..50]).expect_err("truncated");
    assert!(
        error.to_string().starts_with("decoding the JPEG image"),
        "{error}"
    );
    assert_eq!(crate::Error::from(error).status(), 400);
    assert!(Image::from_rgb8(2, 2, vec![0; 11]).is_err());
    assert!(Image::from_rgb8(0, 2, vec![]).is_err());
}

#[test]
fn crops_rotations_and_tensors() {
    // 3x2: pixel (x, y) has red = 10·y + x.
    let rgb: Vec<u8> = (0..2)
        .flat_map(|y| (0..3).flat_map(move |x| [10 * y + x, 0, 255]))
        .collect();
    let image = Image::from_rgb8(3, 2, rgb).expect("image");
    let red = |image: &Image| -> Vec<u8> { image.as_rgb8().chunks(3).map(|p| p[0]).collect() };
    assert_eq!(red(&image.center_crop(1, 2).expect("crop")), [1, 11]);
    assert!(image.center_crop(4, 1).is_err());
    assert_eq!(red(&image.rotate90()), [10, 0, 11, 1, 12, 2]);
    assert_eq!(red(&image.rotate180()), [12, 11, 10, 2, 1, 0]);
    assert_eq!(red(&image.rotate270()), [2, 12, 1, 11, 0, 10]);
    assert_eq!(image.rotate90().rotate270(), image);
    assert_eq!(image.pixel(2, 1), Some([12, 0, 255]));
    assert_eq!(image.pixel(3, 0), None);

    let unit = Normalize::UNIT;
    let nchw = image.to_tensor(Layout::Nchw, ChannelOrder::Bgr, &unit);
    assert_eq!(nchw.dims(), [1, 3, 2, 3]);
    let values = nchw.to_f32().expect("f32");
    // Blue first (all 1.0), then green (0), then red.
    assert_eq!(&values[..6], &[1.0; 6]);
    assert_eq!(&values[6..12], &[0.0; 6]);
    assert!((values[17] - 12.0 / 255.0).abs() < 1e-7);
    let nhwc = image.to_tensor(Layout::Nhwc, ChannelOrder::Rgb, &Normalize::IMAGENET);
    assert_eq!(nhwc.dims(), [1, 2, 3, 3]);
    let first = nhwc.to_f32().expect("f32");
    assert!((first[0] - (0.0 - 0.485) / 0.229).abs() < 1e-6);
    assert!((first[2] - (1.0 - 0.406) / 0.225).abs() < 1e-6);

    let resized = image.resize_shorter_side(5, Filter::Bilinear);
    assert_eq!(
        (resized.width(), resized.height()),
        (8, 5),
        "7.5 rounds to even"
    );
}
