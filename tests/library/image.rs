//! PNG grids: u8 mapping with rounding, tile layout, round trip through a file.

use dsno::util::image::{grid, to_u8, Image};
use tch::{Kind, Tensor};

#[test]
fn maps_minus_one_one_to_u8_with_rounding() {
    let x = Tensor::from_slice(&[-1.0f32, -0.9961, 0.0, 0.0039, 1.0, 2.0, -3.0]);
    let got: Vec<u8> = Vec::try_from(&to_u8(&x)).unwrap();
    // (x + 1)·127.5: 0, 0.497 → 0, 127.5 → 128, 128.0 → 128, 255, clamped 255, clamped 0
    assert_eq!(got, vec![0, 0, 128, 128, 255, 255, 0]);
}

#[test]
fn grid_places_tiles_and_round_trips() {
    // 5 images of 2×3 pixels, 1 channel, image k filled with a distinct grey level
    let levels: Vec<f32> = (0..5).map(|k| -1.0 + 0.5 * k as f32).collect();
    let imgs = Tensor::from_slice(&levels)
        .reshape([5, 1, 1, 1])
        .expand([5, 1, 2, 3], false)
        .contiguous();
    let g = grid(&imgs, 3, 1).unwrap();
    assert_eq!((g.width, g.height, g.channels), (3 * 3 + 4, 2 * 2 + 3, 1));
    let px = |x: usize, y: usize| g.data[y * g.width + x];
    let want: Vec<u8> = Vec::try_from(&to_u8(&Tensor::from_slice(&levels))).unwrap();
    assert_eq!(px(1, 1), want[0]);
    assert_eq!(px(5, 1), want[1]);
    assert_eq!(px(1, 4), want[3]);
    assert_eq!(px(0, 0), 0); // border
    assert_eq!(px(5, 4), want[4]);
    assert_eq!(px(9, 4), 0); // empty sixth tile
    let path = std::env::temp_dir().join(format!("dsno-grid-{}.png", std::process::id()));
    g.save_png(&path).unwrap();
    assert_eq!(Image::load_png(&path).unwrap(), g);
    std::fs::remove_file(path).ok();
    assert!(grid(
        &Tensor::zeros([2, 2, 4, 4], (Kind::Float, tch::Device::Cpu)),
        2,
        0
    )
    .is_err());
}

#[test]
fn a_non_png_file_is_a_clear_error() {
    let path = std::env::temp_dir().join(format!("dsno-notpng-{}.png", std::process::id()));
    std::fs::write(&path, b"hello").unwrap();
    let e = Image::load_png(&path).unwrap_err().to_string();
    assert!(
        e.contains(path.to_str().unwrap()) && e.contains("not a PNG"),
        "{e}"
    );
    std::fs::remove_file(path).ok();
}
