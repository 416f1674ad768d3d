#!/usr/bin/env python3
"""Converts a Progressive-Distillation (Salimans & Ho 2022) Flax checkpoint — the teachers the
DSNO paper distils — into a dsno teacher for dsno's own U-Net (src/nn/unet.rs).

    .venv/bin/python scripts/convert-pd-flax.py CHECKPOINT --out teacher.safetensors
    ./dsno export --model teacher.safetensors --out teacher-fp16.safetensors --fp16   # optional

CHECKPOINT is a `flax.serialization.to_bytes` file (msgpack) holding `ema_params`, the EMA weights
of the PD repository's Linen U-Net. Supported preset: `cifar10` (`cifar_original`: x-prediction,
256 channels, multipliers [1, 1, 1], 3 blocks per level, attention at 16 and 8, one head,
dropout 0.2, BigGAN resampling blocks, cosine log-SNR in [−20, 20] with the network input
atan(e^(−λ/2))/(π/2)), 60,004,099 parameters. Every parameter of that network must be in the
file with its shape and nothing else may be; the error names the key.

Layouts: Flax convolutions are HWIO, dsno's (PyTorch's) OIHW; Dense kernels are [in, out], dsno's
Linear [out, in]; a 1×1 `nin_shortcut` Dense becomes the 1×1 conv `skip`; attention's
`q`/`k`/`v` DenseGeneral kernels [C, heads, head_dim] become the rows q; k; v of the 1×1 conv
`qkv` (heads of head_dim consecutive channels), `proj_out` [heads, head_dim, C] the 1×1 conv
`proj`; GroupNorm `scale` is `weight`.

For tests: `--synthetic-cifar10 OUT` writes a random tree of exactly the CIFAR-10 model's key
paths and shapes with `flax.serialization.to_bytes` (`--drop KEY` / `--add KEY` spoil it), and
`--probe FILE` writes a few leaves in their Flax layout to check the placement against.

Installs flax (pinned) into the running Python on first use.
"""
import argparse
import json
import os
import subprocess
import sys

PINNED = ["flax==0.12.8", "safetensors==0.7.0"]
try:
    import flax.serialization  # noqa: F401
    import safetensors.numpy  # noqa: F401
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *PINNED])

import flax.serialization
import numpy as np
import safetensors.numpy

CIFAR10 = dict(image_size=32, in_channels=3, out_channels=3, channels=256,
               channel_mult=[1, 1, 1], num_res_blocks=3, attn_resolutions=[16, 8],
               num_heads=1, dropout=0.2, groups=32)


def plan(c):
    """(flax module, dsno prefix, kind, shapes) in network order; kind: res, attn, conv, dense,
    norm. Shapes are of the Flax leaves."""
    ch, nrb, mult = c["channels"], c["num_res_blocks"], c["channel_mult"]
    emb, heads = 4 * ch, c["num_heads"]
    out = [("dense0", "temb.dense0", "dense", (ch, emb)), ("dense1", "temb.dense1", "dense", (emb, emb)),
           ("conv_in", "conv_in", "conv", (3, 3, c["in_channels"], ch))]

    def res(flax, dsno, cin, cout):
        out.append((flax, dsno, "res", (cin, cout, emb)))

    def attn(flax, dsno, cc):
        out.append((flax, dsno, "attn", (cc, heads)))

    skips, cur, size, i = [ch], ch, c["image_size"], 0
    for lvl, m in enumerate(mult):
        for b in range(nrb):
            res(f"down_{lvl}.block_{b}", f"down.{i}.res", cur, ch * m)
            cur = ch * m
            if size in c["attn_resolutions"]:
                attn(f"down_{lvl}.attn_{b}", f"down.{i}.attn", cur)
            skips.append(cur)
            i += 1
        if lvl != len(mult) - 1:
            res(f"down_{lvl}.downsample", f"down.{i}.res", cur, cur)
            skips.append(cur)
            size //= 2
            i += 1
    res("mid.block_1", "mid.res0", cur, cur)
    attn("mid.attn_1", "mid.attn", cur)
    res("mid.block_2", "mid.res1", cur, cur)
    i = 0
    for lvl in reversed(range(len(mult))):
        for b in range(nrb + 1):
            cin = cur + skips.pop()
            res(f"up_{lvl}.block_{b}", f"up.{i}.res", cin, ch * mult[lvl])
            cur = ch * mult[lvl]
            if size in c["attn_resolutions"]:
                attn(f"up_{lvl}.attn_{b}", f"up.{i}.attn", cur)
            i += 1
        if lvl != 0:
            res(f"up_{lvl}.upsample", f"up.{i}.res", cur, cur)
            size *= 2
            i += 1
    out += [("norm_out", "out.norm", "norm", (ch,)), ("conv_out", "out.conv", "conv", (3, 3, ch, c["out_channels"]))]
    return out


def flax_leaves(c):
    """{'module/param/...': shape} of the Flax tree."""
    leaves = {}
    for flax, _, kind, s in plan(c):
        if kind == "dense":
            leaves[f"{flax}/kernel"], leaves[f"{flax}/bias"] = s, (s[1],)
        elif kind == "conv":
            leaves[f"{flax}/kernel"], leaves[f"{flax}/bias"] = s, (s[3],)
        elif kind == "norm":
            leaves[f"{flax}/scale"], leaves[f"{flax}/bias"] = s, s
        elif kind == "res":
            cin, cout, emb = s
            leaves.update({f"{flax}/norm1/scale": (cin,), f"{flax}/norm1/bias": (cin,),
                           f"{flax}/conv1/kernel": (3, 3, cin, cout), f"{flax}/conv1/bias": (cout,),
                           f"{flax}/temb_proj/kernel": (emb, 2 * cout), f"{flax}/temb_proj/bias": (2 * cout,),
                           f"{flax}/norm2/scale": (cout,), f"{flax}/norm2/bias": (cout,),
                           f"{flax}/conv2/kernel": (3, 3, cout, cout), f"{flax}/conv2/bias": (cout,)})
            if cin != cout:
                leaves[f"{flax}/nin_shortcut/kernel"] = (cin, cout)
                leaves[f"{flax}/nin_shortcut/bias"] = (cout,)
        elif kind == "attn":
            cc, h = s
            d = cc // h
            leaves.update({f"{flax}/norm/scale": (cc,), f"{flax}/norm/bias": (cc,)})
            for n in "qkv":
                leaves[f"{flax}/{n}/kernel"], leaves[f"{flax}/{n}/bias"] = (cc, h, d), (h, d)
            leaves[f"{flax}/proj_out/kernel"], leaves[f"{flax}/proj_out/bias"] = (h, d, cc), (cc,)
    return leaves


def flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, path))
        else:
            out[path] = np.asarray(v)
    return out


def convert(tree, c):
    leaves = flatten(tree)
    want = flax_leaves(c)
    for k in sorted(want):
        if k not in leaves:
            sys.exit(f"error: the checkpoint has no parameter {k!r} (not the {c['channels']}-channel PD model)")
        if tuple(leaves[k].shape) != tuple(want[k]):
            sys.exit(f"error: parameter {k!r} has shape {tuple(leaves[k].shape)}, expected {tuple(want[k])}")
    for k in sorted(leaves):
        if k not in want:
            sys.exit(f"error: unexpected parameter {k!r} in the checkpoint")
    f = lambda k: leaves[k].astype(np.float32)
    conv = lambda k: np.ascontiguousarray(f(k).transpose(3, 2, 0, 1))
    dense = lambda k: np.ascontiguousarray(f(k).T)
    out = {}
    for flax, dsno, kind, s in plan(c):
        if kind == "dense":
            out[f"{dsno}.weight"], out[f"{dsno}.bias"] = dense(f"{flax}/kernel"), f(f"{flax}/bias")
        elif kind == "conv":
            out[f"{dsno}.weight"], out[f"{dsno}.bias"] = conv(f"{flax}/kernel"), f(f"{flax}/bias")
        elif kind == "norm":
            out[f"{dsno}.weight"], out[f"{dsno}.bias"] = f(f"{flax}/scale"), f(f"{flax}/bias")
        elif kind == "res":
            for n in ["norm1", "norm2"]:
                out[f"{dsno}.{n}.weight"], out[f"{dsno}.{n}.bias"] = f(f"{flax}/{n}/scale"), f(f"{flax}/{n}/bias")
            for n in ["conv1", "conv2"]:
                out[f"{dsno}.{n}.weight"], out[f"{dsno}.{n}.bias"] = conv(f"{flax}/{n}/kernel"), f(f"{flax}/{n}/bias")
            out[f"{dsno}.emb.weight"], out[f"{dsno}.emb.bias"] = dense(f"{flax}/temb_proj/kernel"), f(f"{flax}/temb_proj/bias")
            if f"{flax}/nin_shortcut/kernel" in leaves:
                out[f"{dsno}.skip.weight"] = np.ascontiguousarray(dense(f"{flax}/nin_shortcut/kernel")[:, :, None, None])
                out[f"{dsno}.skip.bias"] = f(f"{flax}/nin_shortcut/bias")
        elif kind == "attn":
            cc = s[0]
            out[f"{dsno}.norm.weight"], out[f"{dsno}.norm.bias"] = f(f"{flax}/norm/scale"), f(f"{flax}/norm/bias")
            rows = [f(f"{flax}/{n}/kernel").reshape(cc, cc).T for n in "qkv"]
            out[f"{dsno}.qkv.weight"] = np.ascontiguousarray(np.concatenate(rows)[:, :, None, None])
            out[f"{dsno}.qkv.bias"] = np.concatenate([f(f"{flax}/{n}/bias").reshape(cc) for n in "qkv"])
            out[f"{dsno}.proj.weight"] = np.ascontiguousarray(f(f"{flax}/proj_out/kernel").reshape(cc, cc).T[:, :, None, None])
            out[f"{dsno}.proj.bias"] = f(f"{flax}/proj_out/bias")
    return out


def synthetic(c, seed, drop, add):
    rng = np.random.default_rng(seed)
    tree = {}
    for path, shape in flax_leaves(c).items():
        if path in drop:
            continue
        node = tree
        *mods, leaf = path.split("/")
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = rng.standard_normal(shape, dtype=np.float32)
    for path in add:
        node = tree
        *mods, leaf = path.split("/")
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = np.zeros((1,), np.float32)
    return {"step": 0, "ema_params": tree}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--out")
    ap.add_argument("--preset", default="cifar10", choices=["cifar10"])
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--synthetic-cifar10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drop", action="append", default=[])
    ap.add_argument("--add", action="append", default=[])
    ap.add_argument("--probe")
    a = ap.parse_args()
    c = CIFAR10
    if a.synthetic_cifar10:
        state = synthetic(c, a.seed, a.drop, a.add)
        with open(a.synthetic_cifar10, "wb") as fh:
            fh.write(flax.serialization.to_bytes(state))
        if a.probe:
            keys = ["dense0/kernel", "conv_in/kernel", "down_1.attn_0/q/kernel", "down_1.attn_0/v/bias",
                    "mid.attn_1/proj_out/kernel", "up_2.block_0/nin_shortcut/kernel",
                    "up_1.upsample/temb_proj/kernel", "norm_out/scale"]
            leaves = flatten(state["ema_params"])
            safetensors.numpy.save_file({k: np.ascontiguousarray(leaves[k]) for k in keys}, a.probe)
        n = sum(int(np.prod(s)) for s in flax_leaves(c).values())
        print(f"synthetic CIFAR-10 PD tree: {n} parameters → {a.synthetic_cifar10}")
        return
    if not a.checkpoint or not a.out:
        ap.error("give CHECKPOINT and --out (or --synthetic-cifar10 OUT)")
    with open(a.checkpoint, "rb") as fh:
        state = flax.serialization.msgpack_restore(fh.read())
    if not isinstance(state, dict) or "ema_params" not in state:
        sys.exit(f"error: {a.checkpoint}: no 'ema_params' in the checkpoint (keys: {sorted(state) if isinstance(state, dict) else type(state)})")
    params = state["ema_params"]
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    tensors = convert(params, c)
    n = sum(v.size for v in tensors.values())
    meta = {"kind": "teacher", "model": {"kind": "unet", **c},
            "schedule": {"kind": "vp_cosine", "lambda_min": -20.0, "lambda_max": 20.0},
            "step": int(np.asarray(state.get("step", 0))), "dataset": a.dataset,
            "source": {"format": "progressive-distillation flax", "preset": a.preset}}
    tmp = a.out + ".tmp"  # written whole, then renamed: no half-written teacher
    safetensors.numpy.save_file(tensors, tmp, metadata={"format": "dsno-checkpoint-1", "dsno": json.dumps(meta)})
    os.replace(tmp, a.out)
    print(f"{a.checkpoint} → {a.out}: {len(tensors)} tensors, {n} parameters")


if __name__ == "__main__":
    main()
