//! Data files: the IDX reader validates what it reads, and the MNIST and Fashion-MNIST test sets
//! load with the expected shapes and labels.
use crate::common;

use dsno::data::idx;

#[test]
fn idx_reader_validates_its_input() {
    let dir = common::tempdir("idx");
    let mut good = vec![0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
    good.extend(0u8..12);
    let raw = dir.join("train-images-idx3-ubyte");
    std::fs::write(&raw, &good).unwrap();
    let a = idx::read(&raw).unwrap();
    assert_eq!(a.dims, vec![2, 2, 3]);
    assert_eq!(a.data, (0u8..12).collect::<Vec<_>>());
    // gzipped: same content
    let gz = dir.join("g.gz");
    {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        enc.write_all(&good).unwrap();
        enc.finish().unwrap();
    }
    assert_eq!(idx::read(&gz).unwrap(), a);
    // the folder loader finds the raw file
    let imgs = idx::load_images(&dir, idx::Split::Train).unwrap();
    assert_eq!(imgs.size(), vec![2, 1, 2, 3]);
    for (bytes, what) in [
        (good[..good.len() - 1].to_vec(), "truncated or corrupt"),
        (good[..6].to_vec(), "truncated IDX header"),
        (
            [vec![0u8, 0, 9, 3], good[4..].to_vec()].concat(),
            "not an IDX file",
        ),
        (
            [vec![1u8, 2, 8, 3], good[4..].to_vec()].concat(),
            "not an IDX file",
        ),
        (vec![0u8, 0], "truncated IDX file"),
    ] {
        let p = dir.join("bad");
        std::fs::write(&p, &bytes).unwrap();
        let e = idx::read(&p).unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("bad"), "{what}: {e}");
    }
    let e = idx::load_images(&dir.join("nowhere"), idx::Split::Test)
        .unwrap_err()
        .to_string();
    assert!(e.contains("t10k-images-idx3-ubyte"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn reads_the_mnist_and_fashion_mnist_test_sets() {
    for name in ["mnist", "fashion-mnist"] {
        let dir = common::data_dir(name);
        let imgs = idx::load_images(&dir, idx::Split::Test).unwrap();
        let labels = idx::load_labels(&dir, idx::Split::Test).unwrap();
        assert_eq!(imgs.size(), vec![10000, 1, 28, 28]);
        assert_eq!(labels.size(), vec![10000]);
        assert_eq!(labels.max().int64_value(&[]), 9);
        let x = dsno::data::to_unit_range(&imgs);
        assert!(x.min().double_value(&[]) >= -1.0 && x.max().double_value(&[]) <= 1.0);
    }
}
