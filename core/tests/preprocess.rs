//! Pre-processing: decoding with limits, mask value sets, transforms and mapping back.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use image::{GrayImage, Rgb};
use mce_core::preprocess::*;
use mce_core::{BackboneKind, Error};
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mce-pre-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn grey_png(dir: &Path, name: &str, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> PathBuf {
    let path = dir.join(name);
    GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))
        .save(&path)
        .expect("write png");
    path
}

fn tensor3(t: &Tensor) -> Vec<Vec<Vec<f32>>> {
    t.to_vec3::<f32>().expect("3-d f32")
}

#[test]
fn load_and_prepare_shapes() -> mce_core::Result<()> {
    let dir = temp_dir("shapes");
    let path = dir.join("img.png");
    RgbImage::from_fn(40, 30, |x, y| Rgb([x as u8, y as u8, 7]))
        .save(&path)
        .expect("write");
    let img = load_rgb(&path)?;
    let dev = Device::Cpu;
    let p = prepare_image(
        &img,
        Resize::LongerSidePad(16),
        BackboneKind::Resnet50,
        &dev,
    )?;
    assert_eq!(p.tensor.dims(), [3, 16, 16]);
    assert_eq!((p.valid_h, p.valid_w, p.orig_h, p.orig_w), (12, 16, 30, 40));
    let p = prepare_image(
        &img,
        Resize::Direct(16),
        BackboneKind::EfficientnetLite0,
        &dev,
    )?;
    assert_eq!((p.valid_h, p.valid_w), (16, 16));
    // PFENet rule: 473 -> 472, 375 * 473 / 500 = 354.75 -> 354 -> 352.
    assert_eq!(Resize::FieldTest(473).valid_hw(375, 500), (352, 472));
    assert_eq!(Resize::LongerSidePad(473).valid_hw(500, 375), (473, 355));
    let err = load_rgb_with_limit(&path, 1000).unwrap_err();
    assert!(matches!(err, Error::Image { .. }) && err.to_string().contains("exceeds"));
    std::fs::remove_dir_all(dir).ok();
    Ok(())
}

#[test]
fn normalisation_and_padding_values() -> mce_core::Result<()> {
    let dev = Device::Cpu;
    // 2 wide x 1 high: (10, 20, 30), (255, 0, 128).
    let px = [[10u8, 20, 30], [255, 0, 128]];
    let img = RgbImage::from_fn(2, 1, |x, _| Rgb(px[x as usize]));
    for kind in [BackboneKind::Resnet50, BackboneKind::EfficientnetLite0] {
        let (mean, std) = kind.normalization();
        let t = tensor3(&prepare_image(&img, Resize::LongerSidePad(2), kind, &dev)?.tensor);
        for c in 0..3 {
            for (x, p) in px.iter().enumerate() {
                let want = (p[c] as f32 - mean[c]) / std[c];
                assert!((t[c][0][x] - want).abs() < 1e-6);
            }
            assert_eq!(t[c][1], [0.0, 0.0], "padding row is the mean colour");
        }
    }
    // FieldTest pads with black: (0 - mean) / std.
    let img = RgbImage::from_pixel(16, 8, Rgb([1, 2, 3]));
    let (mean, std) = BackboneKind::Resnet50.normalization();
    let p = prepare_image(&img, Resize::FieldTest(16), BackboneKind::Resnet50, &dev)?;
    assert_eq!((p.valid_h, p.valid_w), (8, 16));
    let t = tensor3(&p.tensor);
    assert!((t[2][12][5] + mean[2] / std[2]).abs() < 1e-6);
    assert!((t[2][3][5] - (3.0 - mean[2]) / std[2]).abs() < 1e-6);
    Ok(())
}

#[test]
fn mask_value_sets() -> mce_core::Result<()> {
    let dir = temp_dir("masks");
    let bin = MaskEncoding::Binary;
    let p = grey_png(&dir, "a.png", 4, 2, |x, _| if x < 2 { 0 } else { 255 });
    assert_eq!(load_mask(&p, bin)?.data, [0, 0, 1, 1, 0, 0, 1, 1]);
    let vals = [0u8, 1, 255, 1];
    let p = grey_png(&dir, "b.png", 4, 1, |x, _| vals[x as usize]);
    assert_eq!(load_mask(&p, bin)?.data, [0, 1, 255, 1]);
    // Soft edges: 1 of 40 pixels (2.5%) is 200 -> foreground.
    let soft = |x: u32, _| match x {
        2 => 200,
        x if x < 20 => 0,
        _ => 255,
    };
    let m = load_mask(grey_png(&dir, "c.png", 40, 1, soft), bin)?;
    assert_eq!((m.foreground_count(), m.data[2]), (21, 1));
    // Class index: 3 -> 1, 255 kept, 5 and 0 -> 0.
    let vals = [0u8, 3, 5, 255, 3];
    let p = grey_png(&dir, "d.png", 5, 1, |x, _| vals[x as usize]);
    assert_eq!(
        load_mask(&p, MaskEncoding::ClassIndex(3))?.data,
        [0, 1, 0, 255, 1]
    );
    let err = load_mask(&p, bin).unwrap_err(); // class-index map passed as binary
    assert!(matches!(err, Error::Mask { .. }), "{err}");
    // A colour file with grey pixels is fine as class index; a coloured one is not.
    let rgb = dir.join("e.png");
    RgbImage::from_fn(2, 1, |x, _| Rgb([x as u8 * 3; 3]))
        .save(&rgb)
        .expect("write");
    assert_eq!(load_mask(&rgb, MaskEncoding::ClassIndex(3))?.data, [0, 1]);
    RgbImage::from_fn(2, 1, |x, _| Rgb([x as u8 * 3, 0, 0]))
        .save(&rgb)
        .expect("write");
    assert!(load_mask(&rgb, MaskEncoding::ClassIndex(3)).is_err());
    std::fs::remove_dir_all(dir).ok();
    Ok(())
}

#[test]
fn bad_masks_and_files_are_named() {
    let dir = temp_dir("bad");
    let photo = grey_png(&dir, "photo.png", 16, 16, |x, y| (x * 16 + y) as u8);
    let err = load_mask(&photo, MaskEncoding::Binary)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("photo.png") && err.contains("not a binary mask"),
        "{err}"
    );

    let empty = grey_png(&dir, "empty.png", 3, 3, |_, _| 0);
    let m = load_mask(&empty, MaskEncoding::Binary).expect("decodes");
    let err = m.check_nonempty(&empty).unwrap_err();
    assert!(matches!(err, Error::Mask { .. }) && err.to_string().contains("empty.png"));

    let corrupt = dir.join("corrupt.png");
    let mut state = 12345u32;
    let bytes: Vec<u8> = (0..512)
        .map(|_| {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(&corrupt, bytes).expect("write");
    let err = load_rgb(&corrupt).unwrap_err();
    assert!(matches!(err, Error::Image { .. }) && err.to_string().contains("corrupt.png"));

    let err = load_rgb(dir.join("missing.jpg")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("missing.jpg"));
    let err = load_mask(dir.join("gone.png"), MaskEncoding::Binary).unwrap_err();
    assert!(err.to_string().contains("gone.png"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn mask_resize_padding_and_model_mask() -> mce_core::Result<()> {
    let dev = Device::Cpu;
    // 4 wide x 2 high, LongerSidePad(2) -> valid 1x2, nearest picks columns 0 and 2 of row 0.
    let mask = Mask {
        width: 4,
        height: 2,
        data: vec![1, 0, 255, 0, 0, 0, 0, 0],
    };
    let t = prepare_mask(&mask, Resize::LongerSidePad(2), &dev)?;
    assert_eq!(tensor3(&t), [[[1.0, 255.0], [255.0, 255.0]]]);
    let m = mask_tensor_for_model(&t)?;
    assert_eq!(tensor3(&m), [[[1.0, 0.0], [0.0, 0.0]]]);
    let t = prepare_mask(&mask, Resize::Direct(4), &dev)?;
    assert_eq!(tensor3(&t)[0][2], [0.0; 4]);
    Ok(())
}

fn prepared(resize: Resize, orig_h: usize, orig_w: usize) -> Prepared {
    let (valid_h, valid_w) = resize.valid_hw(orig_h, orig_w);
    let s = resize.size();
    Prepared {
        tensor: Tensor::zeros((3, s, s), DType::F32, &Device::Cpu).expect("zeros"),
        valid_h,
        valid_w,
        orig_h,
        orig_w,
        resize,
    }
}

#[test]
fn logits_map_back_to_original() -> mce_core::Result<()> {
    // S = 4, original 4 high x 8 wide -> valid 2 x 4. Foreground logit by column [-3, -1, 1, 3]
    // in the valid rows; the padding rows hold +100 and must be cropped away.
    let mut fg = vec![100f32; 16];
    for y in 0..2 {
        fg[y * 4..y * 4 + 4].copy_from_slice(&[-3.0, -1.0, 1.0, 3.0]);
    }
    let bg = vec![0f32; 16];
    let logits = Tensor::from_vec([bg, fg].concat(), (2, 4, 4), &Device::Cpu)?;
    let p = prepared(Resize::LongerSidePad(4), 4, 8);
    assert_eq!((p.valid_h, p.valid_w), (2, 4));
    // Columns 4..8 -> align_corners sources o * 3 / 7 -> logits -3 + 2 * src: > 0 from o = 4.
    let pred = logits_to_original(&logits, &p)?;
    assert_eq!(pred, [0, 0, 0, 0, 1, 1, 1, 1].repeat(4));
    let prob = probabilities_to_original(&logits.unsqueeze(0)?, &p)?;
    let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
    assert!((prob[0] - sigmoid(-3.0)).abs() < 1e-6 && (prob[31] - sigmoid(3.0)).abs() < 1e-6);
    assert!((prob[9] - sigmoid(-3.0 + 2.0 * 3.0 / 7.0)).abs() < 1e-5);
    // FieldTest: the whole 4x4 is resized to 8x8 and the top 4 rows kept (padding rows count).
    let pred = logits_to_original(&logits, &prepared(Resize::FieldTest(4), 4, 8))?;
    assert_eq!(pred.len(), 32);
    assert_eq!(
        &pred[24..],
        [1; 8],
        "row 3 of 8 already mixes in the +100 padding rows"
    );
    let bad = Tensor::zeros((2, 5, 5), DType::F32, &Device::Cpu)?;
    assert!(matches!(logits_to_original(&bad, &p), Err(Error::Input(_))));
    Ok(())
}
