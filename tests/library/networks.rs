//! U-Net, MLP and the DSNO operator: shapes, parameter counts, and the operator reducing to
//! the teacher when its TimeConv layers are zero.
use dsno::nn::mlp::MlpConfig;
use dsno::nn::timeconv::TimeConv;
use dsno::nn::unet::UNetConfig;
use dsno::nn::ModelConfig;
use dsno::operator::{Operator, OperatorConfig};
use dsno::schedule::{parse_output_times, Schedule};
use tch::{nn, Device, Kind, Tensor};

fn small_unet(size: i64, ch: i64) -> UNetConfig {
    UNetConfig {
        image_size: size,
        in_channels: ch,
        out_channels: ch,
        channels: 16,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![size / 2],
        num_heads: 2,
        dropout: 0.0,
        groups: 8,
        num_classes: None,
        head_dim: None,
    }
}

fn count(vs: &nn::VarStore) -> u64 {
    vs.variables().values().map(|t| t.numel() as u64).sum()
}

#[test]
fn unet_output_shapes_and_counted_parameters() {
    for (size, ch) in [(28i64, 1i64), (32, 3)] {
        let cfg = small_unet(size, ch);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ModelConfig::Unet(cfg.clone()).build(&vs.root()).unwrap();
        let x = Tensor::randn([3, ch, size, size], (Kind::Float, Device::Cpu));
        let y = net
            .forward(&x, &Tensor::from_slice(&[0.1f32, 0.5, 0.9]), None, false)
            .unwrap();
        assert_eq!(y.size(), vec![3, ch, size, size]);
        assert_eq!(count(&vs), cfg.num_params(), "{size}×{size}×{ch}");
    }
    let mnist = UNetConfig::mnist();
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = ModelConfig::Unet(mnist.clone()).build(&vs.root()).unwrap();
    assert_eq!(count(&vs), mnist.num_params());
    assert!(
        (1_000_000..=2_000_000).contains(&mnist.num_params()),
        "MNIST preset: {}",
        mnist.num_params()
    );
}

#[test]
fn cifar10_configuration_has_the_authors_parameter_count() {
    let cfg = UNetConfig::default();
    assert_eq!(cfg.num_params(), 60_004_099);
    let slots = cfg.slot_channels();
    assert_eq!(slots.len(), 22);
    let tc: u64 = slots.iter().map(|&c| TimeConv::num_params(c, 2)).sum();
    assert_eq!(tc, 5_767_168);
}

#[test]
fn mlp_shapes_and_parameters() {
    let cfg = MlpConfig {
        dim: 2,
        hidden: 32,
        blocks: 2,
        dropout: 0.0,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ModelConfig::Mlp(cfg.clone()).build(&vs.root()).unwrap();
    let y = net
        .forward(
            &Tensor::randn([5, 2], (Kind::Float, Device::Cpu)),
            &Tensor::full([5], 0.3, (Kind::Float, Device::Cpu)),
            None,
            false,
        )
        .unwrap();
    assert_eq!(y.size(), vec![5, 2]);
    assert_eq!(count(&vs), cfg.num_params());
}

/// With every TimeConv weight zero, slot m of the operator is the teacher at (x_T, t_m).
fn operator_reduces_to_teacher(model: ModelConfig, shape: &[i64]) {
    let schedule = Schedule::vp_cosine();
    let times = parse_output_times("quad:4").unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(0);
    let op = Operator::new(
        &vs.root(),
        &OperatorConfig {
            backbone: model.clone(),
            times: times.clone(),
            modes: 2,
        },
        schedule,
    )
    .unwrap();
    // perturb the zero-initialised output layers so that the check is not trivially 0 = 0
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            if name.starts_with("timeconv") {
                let _ = v.zero_();
            } else {
                let noise = v.randn_like() * 0.05;
                let _ = v.g_add_(&noise);
            }
        }
    });
    let mut full = vec![2i64];
    full.extend_from_slice(shape);
    let x = Tensor::randn(full.as_slice(), (Kind::Float, Device::Cpu));
    let out = op.forward(&x, None, false).unwrap();
    assert_eq!(out.size()[..2], [2, 4]);
    for (m, &t) in times.iter().enumerate() {
        let t_in = Tensor::full([2], schedule.t_input(t), (Kind::Float, Device::Cpu));
        let want = op.backbone.forward(&x, &t_in, None, false).unwrap();
        let got = out.select(1, m as i64);
        let err = (&got - &want).abs().max().double_value(&[]);
        assert!(err < 1e-5, "slot {m}: max difference {err}");
        assert!(want.abs().max().double_value(&[]) > 1e-3);
    }
    // and with TimeConv active the slots interact (random weights: a constant mix would add
    // the same value to every channel, which the next LayerNorm/GroupNorm removes)
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            if name.starts_with("timeconv") {
                let r = v.randn_like() * 0.1;
                v.copy_(&r);
            }
        }
    });
    let mixed = op.forward(&x, None, false).unwrap();
    let d = (mixed - out).abs().max().double_value(&[]);
    assert!(d > 1e-4, "TimeConv active changed the output by only {d}");
}

#[test]
fn operator_with_zero_timeconv_is_the_teacher_unet() {
    operator_reduces_to_teacher(ModelConfig::Unet(small_unet(28, 1)), &[1, 28, 28]);
}

#[test]
fn operator_with_zero_timeconv_is_the_teacher_mlp() {
    operator_reduces_to_teacher(
        ModelConfig::Mlp(MlpConfig {
            dim: 2,
            hidden: 32,
            blocks: 3,
            dropout: 0.0,
        }),
        &[2],
    );
}

#[test]
fn operator_counts_its_parameters() {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = OperatorConfig {
        backbone: ModelConfig::Unet(small_unet(32, 3)),
        times: dsno::schedule::parse_output_times("uniform:4").unwrap(),
        modes: 2,
    };
    let op = Operator::new(&vs.root(), &cfg, Schedule::vp_cosine()).unwrap();
    assert_eq!(count(&vs), op.num_params());
    assert!(op.flops_per_sample() > 4.0 * op.backbone.flops_per_sample());
}

#[test]
fn bad_unet_configs_are_clear_errors() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut c = small_unet(30, 1);
    c.channel_mult = vec![1, 2, 2];
    let e = ModelConfig::Unet(c)
        .build(&vs.root())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("divisible by 2^2"), "{e}");
    let mut c = small_unet(28, 1);
    c.num_heads = 3;
    let e = ModelConfig::Unet(c)
        .build(&vs.root())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("heads"), "{e}");
}
