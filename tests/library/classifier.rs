//! The feature classifier learns MNIST (a short run on a subset, as a smoke test of training).
use crate::common;

use dsno::data::{idx, to_unit_range};
use dsno::nn::classifier::Classifier;
use dsno::train::classifier::{accuracy, train, Schedule};
use tch::{nn, Device, Kind};

#[test]
fn classifier_learns_mnist_digits() {
    let _serial = common::serial();
    let dir = common::data_dir("mnist");
    let images = to_unit_range(&idx::load_images(&dir, idx::Split::Test).unwrap());
    let labels = idx::load_labels(&dir, idx::Split::Test).unwrap();
    let (tr_x, tr_y) = (images.narrow(0, 0, 6000), labels.narrow(0, 0, 6000));
    let (te_x, te_y) = (images.narrow(0, 6000, 4000), labels.narrow(0, 6000, 4000));
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Classifier::new(&vs.root());
    let before = accuracy(&net, &te_x, &te_y);
    train(
        &vs,
        &net,
        &tr_x,
        &tr_y,
        Schedule {
            steps: 300,
            batch: 64,
            lr: 2e-3,
            seed: 0,
            progress: false,
        },
    )
    .unwrap();
    let after = accuracy(&net, &te_x, &te_y);
    println!("held-out accuracy: {before:.3} before, {after:.3} after 300 steps on 6,000 images");
    assert!(after > 0.9, "accuracy {after}");
    assert_eq!(
        net.features_batched(&te_x.narrow(0, 0, 10), 4).size(),
        vec![10, 64]
    );
    let p = net.probabilities(&te_x.narrow(0, 0, 7), 3);
    assert!(
        (p.sum_dim_intlist([1i64].as_slice(), false, Kind::Float) - 1.0)
            .abs()
            .max()
            .double_value(&[])
            < 1e-5
    );
}
