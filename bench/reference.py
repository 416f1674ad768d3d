"""Plain PyTorch reference of dsno's U-Net and DSNO operator, for `dsno bench engine --vs-pytorch`.

The same architecture as src/nn/unet.rs (iDDPM / progressive-distillation U-Net: GroupNorm(eps
1e-6) + SiLU ResBlocks with FiLM, BigGAN-style resampling blocks, multi-head attention, skip
concatenations) and the TimeConv of src/nn/timeconv.rs in the authors' rfft layout
(rfft along the M slots, complex einsum over channels on the kept modes, irfft). Parameter names
match dsno's checkpoints.

    python bench/reference.py --config '<json UNetConfig>' --batch 64 --slots 4 --iters 10

prints one JSON line with median times in milliseconds.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def gn(c, groups):
    g = max(x for x in range(1, min(groups, c) + 1) if c % x == 0)
    return nn.GroupNorm(g, c, eps=1e-6)


def sinusoidal(steps, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=steps.device) / half)
    args = steps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TimeEmbedding(nn.Module):
    def __init__(self, ch, dim):
        super().__init__()
        self.ch = ch
        self.dense0 = nn.Linear(ch, dim)
        self.dense1 = nn.Linear(dim, dim)

    def forward(self, t_in):
        return self.dense1(F.silu(self.dense0(sinusoidal(t_in * 1000.0, self.ch))))


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb, groups, dropout, resample=None):
        super().__init__()
        self.norm1 = gn(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * cout)
        self.norm2 = gn(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.resample = resample
        self.dropout = dropout
        self.cout = cout

    def rs(self, x):
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x, emb):
        h = F.silu(self.norm1(x))
        h, x = self.rs(h), self.rs(x)
        h = self.conv1(h)
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(F.dropout(h, self.dropout, self.training))
        return (self.skip(x) if self.skip is not None else x) + h


class Attention(nn.Module):
    def __init__(self, c, heads, groups):
        super().__init__()
        self.norm = gn(c, groups)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        self.heads = heads

    def forward(self, x):
        b, c, hh, ww = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, hh * ww)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        s = 1.0 / math.sqrt(math.sqrt(d))
        w = torch.softmax(torch.einsum("bhdq,bhdk->bhqk", q * s, k * s), dim=-1)
        a = torch.einsum("bhqk,bhdk->bhdq", w, v)
        return x + self.proj(a.reshape(b, c, hh, ww))


class Block(nn.Module):
    def __init__(self, cin, cout, emb, cfg, resample=None, attn=False):
        super().__init__()
        self.res = ResBlock(cin, cout, emb, cfg["groups"], cfg["dropout"], resample)
        self.attn = Attention(cout, heads(cfg, cout), cfg["groups"]) if attn else None
        self.resample = resample

    def forward(self, x, emb):
        h = self.res(x, emb)
        return self.attn(h) if self.attn is not None else h


class TimeConv(nn.Module):
    """The authors' layout: rfft along M, complex mix of the first `modes` bins, irfft."""

    def __init__(self, c, modes):
        super().__init__()
        self.modes = modes
        self.weight = nn.Parameter(torch.rand(c, c, modes, 2) / (c * c))

    def forward(self, u):  # [B, M, C, H, W]
        m = u.shape[1]
        spec = torch.fft.rfft(u.float(), dim=1)[:, : self.modes]
        v = torch.einsum("bkixy,iok->bkoxy", spec, torch.view_as_complex(self.weight))
        out = torch.zeros(u.shape[0], m // 2 + 1, *v.shape[2:], dtype=v.dtype, device=u.device)
        out[:, : self.modes] = v
        return u + F.leaky_relu(torch.fft.irfft(out, n=m, dim=1), 0.01)


def heads(cfg, c):
    """Heads of an attention layer of c channels: c / head_dim when head_dim is set."""
    return c // cfg["head_dim"] if cfg.get("head_dim") else cfg["num_heads"]


class UNet(nn.Module):
    def __init__(self, cfg, modes=None, slots=None):
        super().__init__()
        ch, e = cfg["channels"], 4 * cfg["channels"]
        self.cfg = cfg
        self.temb = TimeEmbedding(ch, e)
        # class-conditional: K + 1 rows (the last the null class), zero-initialised
        k = cfg.get("num_classes")
        self.class_emb = nn.Parameter(torch.zeros(k + 1, e)) if k else None
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch, 3, padding=1)
        nn.init.zeros_(self.conv_in.bias)
        down, up, skips = [], [], [ch]
        cur, res = ch, cfg["image_size"]
        mults = cfg["channel_mult"]
        for lvl, m in enumerate(mults):
            for _ in range(cfg["num_res_blocks"]):
                down.append(Block(cur, ch * m, e, cfg, attn=res in cfg["attn_resolutions"]))
                cur = ch * m
                skips.append(cur)
            if lvl != len(mults) - 1:
                down.append(Block(cur, cur, e, cfg, resample="down"))
                res //= 2
                skips.append(cur)
        self.down = nn.ModuleList(down)
        self.mid = nn.ModuleDict(
            {"res0": ResBlock(cur, cur, e, cfg["groups"], cfg["dropout"]), "attn": Attention(cur, heads(cfg, cur), cfg["groups"]),
             "res1": ResBlock(cur, cur, e, cfg["groups"], cfg["dropout"])})
        for lvl, m in reversed(list(enumerate(mults))):
            for _ in range(cfg["num_res_blocks"] + 1):
                up.append(Block(cur + skips.pop(), ch * m, e, cfg, attn=res in cfg["attn_resolutions"]))
                cur = ch * m
            if lvl != 0:
                up.append(Block(cur, cur, e, cfg, resample="up"))
                res *= 2
        self.up = nn.ModuleList(up)
        self.out = nn.ModuleDict({"norm": gn(cur, cfg["groups"]), "conv": nn.Conv2d(cur, cfg["out_channels"], 3, padding=1)})
        nn.init.zeros_(self.out["conv"].weight)
        self.slots = slots
        if modes is not None:
            chans = [b.res.cout for b in self.down if b.resample is None] + [cur_mid(self)] + [b.res.cout for b in self.up if b.resample is None]
            self.timeconv = nn.ModuleList([TimeConv(c, modes) for c in chans])
        else:
            self.timeconv = None

    def hook(self, i, h):
        if self.timeconv is None:
            return h
        bm = h.shape[0]
        u = h.reshape(bm // self.slots, self.slots, *h.shape[1:])
        return self.timeconv[i](u).reshape(h.shape)

    def body(self, h, emb):
        hs, slot = [h], 0
        for b in self.down:
            h = b(h, emb)
            if b.resample is None:
                h = self.hook(slot, h)
                slot += 1
            hs.append(h)
        h = self.mid["attn"](self.mid["res0"](h, emb))
        h = self.hook(slot, h)
        slot += 1
        h = self.mid["res1"](h, emb)
        for b in self.up:
            if b.resample is None:
                h = self.hook(slot, b(torch.cat([h, hs.pop()], 1), emb))
                slot += 1
            else:
                h = b(h, emb)
        return self.out["conv"](F.silu(self.out["norm"](h)))

    def forward(self, x, t_in):
        return self.body(self.conv_in(x), self.temb(t_in))

    def operator(self, x, t_in_slots):
        b, m = x.shape[0], self.slots
        h0 = self.conv_in(x)
        h0 = h0[:, None].expand(b, m, *h0.shape[1:]).reshape(b * m, *h0.shape[1:])
        emb = self.temb(t_in_slots).repeat(b, 1)
        out = self.body(h0, emb)
        return out.reshape(b, m, *out.shape[1:])


def cur_mid(net):
    return net.cfg["channels"] * net.cfg["channel_mult"][-1]


def median_ms(fn, iters):
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="UNetConfig as JSON")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--modes", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--params-only", action="store_true", help="print the parameter count only")
    a = ap.parse_args()
    if a.params_only:
        print(json.dumps({"unet_params": sum(p.numel() for p in UNet(json.loads(a.config)).parameters())}))
        return
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    cfg = json.loads(a.config)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    x = torch.randn(a.batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"], device=dev)
    t = torch.rand(a.batch, device=dev)
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    for name, modes in [("unet", None), ("operator", a.modes)]:
        net = UNet(cfg, modes=modes, slots=a.slots).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        ts = torch.linspace(1.0, 0.0, a.slots, device=dev)
        run = (lambda: net(x, t)) if modes is None else (lambda: net.operator(x, ts))

        def fwd():
            with torch.no_grad():
                run()
            sync()

        def step():
            opt.zero_grad(set_to_none=True)
            y = run()
            y.float().square().mean().backward()
            opt.step()
            sync()

        net.eval()
        out[name + "_forward_ms"] = median_ms(fwd, a.iters)
        net.train()
        out[name + "_train_ms"] = median_ms(step, a.iters)
        out[name + "_params"] = sum(p.numel() for p in net.parameters())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
