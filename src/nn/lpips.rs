//! LPIPS with a VGG-16 trunk and without its learned linear layers (`lpips=False`, Zhang et al.
//! 2018), the DSNO authors' CIFAR-10 distillation loss: images in [−1, 1] are shifted and scaled
//! per channel (LPIPS's `ScalingLayer`), run through VGG-16's `features` up to `relu5_3`, and at
//! `relu1_2`, `relu2_2`, `relu3_3`, `relu4_3`, `relu5_3` each feature vector is divided by its
//! Euclidean norm over channels (+1e-10); the squared differences are summed over channels,
//! averaged over space and summed over the five layers. Grey images are repeated to three
//! channels. Variable names are torchvision's (`features.{i}.weight`), so its `vgg16` state dict
//! loads as it is (scripts/convert-vgg16.py).
use tch::{nn, nn::Module, Kind, Tensor};

/// The conv layers of VGG-16's `features`: (index, in channels, out channels), and after which
/// index each LPIPS layer is tapped (its ReLU).
const CONVS: [(i64, i64, i64); 13] = [
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
];
/// The convs after which VGG max-pools (2×2) before the next block.
const POOL_AFTER: [i64; 4] = [2, 7, 14, 21];
/// The convs whose ReLU output is an LPIPS layer.
const TAPS: [i64; 5] = [2, 7, 14, 21, 28];
const SHIFT: [f64; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f64; 3] = [0.458, 0.448, 0.450];

/// The LPIPS distance network (frozen VGG-16 trunk).
#[derive(Debug)]
pub struct Lpips {
    convs: Vec<(i64, nn::Conv2D)>,
}

impl Lpips {
    /// Creates the VGG-16 variables under `p` (`p/features/{i}/{weight,bias}`).
    pub fn new(p: &nn::Path) -> Self {
        let cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let f = p / "features";
        let convs = CONVS
            .iter()
            .map(|&(i, c_in, c_out)| (i, nn::conv2d(&f / i, c_in, c_out, 3, cfg)))
            .collect();
        Lpips { convs }
    }

    /// The unit-normalised features of the five layers, for images `[N, 1 or 3, H, W]` in
    /// [−1, 1] (H, W ≥ 16).
    pub fn features(&self, x: &Tensor) -> Vec<Tensor> {
        let x = if x.size()[1] == 1 {
            x.repeat([1, 3, 1, 1])
        } else {
            x.shallow_clone()
        };
        let opts = (x.kind(), x.device());
        let shift = crate::device::upload_slice(&SHIFT, opts.1)
            .to_kind(opts.0)
            .view([1, 3, 1, 1]);
        let scale = crate::device::upload_slice(&SCALE, opts.1)
            .to_kind(opts.0)
            .view([1, 3, 1, 1]);
        let mut h = (x - shift) / scale;
        let mut out = vec![];
        for (i, conv) in &self.convs {
            h = conv.forward(&h).relu();
            if TAPS.contains(i) {
                let norm = h
                    .square()
                    .sum_dim_intlist([1i64].as_slice(), true, h.kind())
                    .sqrt();
                out.push(&h / (norm + 1e-10));
            }
            if POOL_AFTER.contains(i) {
                h = h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
        }
        out
    }

    /// The distance of each layer `[5, N]` between image batches `x0` and `x1` of equal shape.
    pub fn layers(&self, x0: &Tensor, x1: &Tensor) -> Tensor {
        let (f0, f1) = (self.features(x0), self.features(x1));
        let per: Vec<Tensor> = f0
            .iter()
            .zip(&f1)
            .map(|(a, b)| {
                (a - b)
                    .square()
                    .sum_dim_intlist([1i64].as_slice(), false, a.kind())
                    .mean_dim([1i64, 2].as_slice(), false, a.kind())
            })
            .collect();
        Tensor::stack(&per, 0)
    }

    /// LPIPS `[N]` between image batches `x0` and `x1` of equal shape.
    pub fn distance(&self, x0: &Tensor, x1: &Tensor) -> Tensor {
        self.layers(x0, x1)
            .sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)
    }
}
