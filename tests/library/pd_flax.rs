//! scripts/convert-pd-flax.py on a synthetic Progressive-Distillation CIFAR-10 tree (random
//! values, the exact key paths and shapes of the PD model, written by
//! `flax.serialization.to_bytes`): the teacher loads into dsno's U-Net with 60,004,099
//! parameters, sampled leaves land where they belong in the right layout, and a missing or
//! extra key is an error naming it with no file written.
use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};

fn python() -> Option<PathBuf> {
    let py = common::root().join(".venv/bin/python");
    if py.is_file() {
        Some(py)
    } else {
        eprintln!("SKIPPED: no .venv (scripts/setup.sh makes it)");
        None
    }
}

fn script(py: &Path, args: &[&str]) -> std::process::Output {
    Command::new(py)
        .arg(common::root().join("scripts/convert-pd-flax.py"))
        .args(args)
        .output()
        .unwrap()
}

fn get(v: &[(String, Tensor)], name: &str) -> Tensor {
    v.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .1
        .shallow_clone()
}

#[test]
fn a_pd_cifar10_tree_converts_into_the_dsno_unet() {
    let Some(py) = python() else { return };
    let dir = common::tempdir("pd-flax");
    let s = |p: &Path| p.display().to_string();
    let (tree, probe, out) = (
        dir.join("pd.msgpack"),
        dir.join("probe.safetensors"),
        dir.join("teacher.safetensors"),
    );
    let o = script(
        &py,
        &["--synthetic-cifar10", &s(&tree), "--probe", &s(&probe)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = script(&py, &[&s(&tree), "--out", &s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let ck = dsno::checkpoint::load(&out).unwrap();
    let n: i64 = ck.tensors.values().map(|t| t.numel() as i64).sum();
    assert_eq!(n, 60_004_099);
    assert_eq!(ck.meta.model.num_params(), 60_004_099);
    // Every variable of dsno's U-Net is there with its shape (the loader checks each).
    dsno::model::Teacher::load(&out, tch::Device::Cpu).unwrap();

    let p = Tensor::read_safetensors(&probe).unwrap();
    let t = |name: &str| ck.tensors[name].to_kind(Kind::Float);
    // Exact: the conversion only moves and transposes stored values (no arithmetic), so any
    // processor gives the same bits.
    let same = |a: &Tensor, b: &Tensor, what: &str| {
        assert_eq!(a.size(), b.size(), "{what}");
        assert!(a.equal(b), "{what}: values differ");
    };
    // Dense [in, out] → Linear [out, in]; Conv HWIO → OIHW.
    same(
        &t("temb.dense0.weight"),
        &get(&p, "dense0/kernel").tr(),
        "dense0",
    );
    same(
        &t("conv_in.weight"),
        &get(&p, "conv_in/kernel").permute([3, 2, 0, 1]),
        "conv_in",
    );
    // down_1.attn_0 is down block 4 (level 0: three blocks and the downsample).
    let qkv = t("down.4.attn.qkv.weight").squeeze_dim(-1).squeeze_dim(-1);
    same(
        &qkv.narrow(0, 0, 256),
        &get(&p, "down_1.attn_0/q/kernel").reshape([256, 256]).tr(),
        "q rows",
    );
    same(
        &t("down.4.attn.qkv.bias").narrow(0, 512, 256),
        &get(&p, "down_1.attn_0/v/bias").reshape([256]),
        "v bias",
    );
    let proj = t("mid.attn.proj.weight").squeeze_dim(-1).squeeze_dim(-1);
    same(
        &proj,
        &get(&p, "mid.attn_1/proj_out/kernel")
            .reshape([256, 256])
            .tr(),
        "proj_out",
    );
    // up_2.block_0 is up block 0 (512 → 256: a 1×1 skip); up_1.upsample is up block 9.
    let skip = t("up.0.res.skip.weight").squeeze_dim(-1).squeeze_dim(-1);
    same(
        &skip,
        &get(&p, "up_2.block_0/nin_shortcut/kernel").tr(),
        "nin_shortcut",
    );
    same(
        &t("up.9.res.emb.weight"),
        &get(&p, "up_1.upsample/temb_proj/kernel").tr(),
        "upsample temb_proj",
    );
    same(
        &t("out.norm.weight"),
        &get(&p, "norm_out/scale"),
        "norm_out",
    );

    // A missing and an extra key: named, nothing written.
    for (flag, key, bad) in [
        ("--drop", "mid.attn_1/q/kernel", "missing.msgpack"),
        ("--add", "extra_module/kernel", "extra.msgpack"),
    ] {
        let tree = dir.join(bad);
        let o = script(&py, &["--synthetic-cifar10", &s(&tree), flag, key]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let target = dir.join(format!("{bad}.safetensors"));
        let o = script(&py, &[&s(&tree), "--out", &s(&target)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(key),
            "{flag} {key}: {err}"
        );
        assert!(!target.exists() && !dir.join(format!("{bad}.safetensors.tmp")).exists());
        let _ = std::fs::remove_file(&tree);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
