#!/usr/bin/env python3
"""Writes torchvision's ImageNet VGG-16 `features` weights as a safetensors file for dsno's
LPIPS loss (`loss = "lpips"`, `lpips_weights = "<file>"` in a distillation config).

    .venv/bin/python scripts/convert-vgg16.py vgg16.safetensors

torchvision downloads the weights (VGG16_Weights.IMAGENET1K_V1, 528 MB) on first use; the
pinned torchvision==0.26.0 is installed into the running Python if missing. Only the 26 tensors
`features.{i}.weight` / `features.{i}.bias` that LPIPS uses are written (float32).
"""
import subprocess
import sys

try:
    import safetensors.torch
    import torchvision
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "numpy", "pillow", "packaging"])
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "torchvision==0.26.0", "safetensors==0.7.0"]
    )
    import safetensors.torch
    import torchvision


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: convert-vgg16.py OUT.safetensors")
    weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1
    model = torchvision.models.vgg16(weights=weights)
    state = {
        k: v.float().contiguous()
        for k, v in model.state_dict().items()
        if k.startswith("features.")
    }
    safetensors.torch.save_file(state, sys.argv[1], metadata={"source": f"torchvision {torchvision.__version__} {weights}"})
    print(f"{len(state)} tensors → {sys.argv[1]}")


if __name__ == "__main__":
    main()
