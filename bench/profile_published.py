"""MACs and parameters of the upstream CycleGAN and pix2pix teachers, next to the figures papers publish.

GAN Compression (Li et al., CVPR 2020, Table 1) and Wavelet KD (Zhang et al., CVPR 2022) report the CycleGAN
ResNet-9 generator (ngf 64) at 11.378 M parameters and 56.8 G MACs, and the pix2pix U-Net-256 at 54.41 M and
18.6 G, at 256x256, counted with thop. ganzip counts both conventions itself; thop, when installed, is run on the
same modules as a third, independent count. Prints one JSON object.

    python bench/profile_published.py [--size 256]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import torch

from ganzip import archs, profile

PUBLISHED = {
    "cyclegan_resnet9_ngf64": {"params": 11.378e6, "macs": 56.8e9,
                               "source": "GAN Compression Table 1; Wavelet KD (CVPR 2022)"},
    "pix2pix_unet256_ngf64": {"params": 54.41e6, "macs": 18.6e9, "source": "GAN Compression Table 1"},
}

SPECS = {
    "cyclegan_resnet9_ngf64": lambda: archs.default_spec("resnet", ngf=64, n_blocks=9, norm="instance"),
    "pix2pix_unet256_ngf64": lambda: archs.default_spec("unet", ngf=64, num_downs=8, norm="batch", dropout=True),
}


def thop_macs(module: torch.nn.Module, size: int) -> float | None:
    try:
        import thop
    except ImportError:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        macs, _ = thop.profile(module, inputs=(torch.zeros(1, 3, size, size),), verbose=False)
    return float(macs)


def rel(measured: float | None, published: float) -> float | None:
    return None if measured is None else (measured - published) / published


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args(argv)
    out = {"size": args.size, "models": {}}
    for name, make in SPECS.items():
        module = archs.build(make()).eval()
        macs = profile.count_macs(module, args.size)
        params = profile.count_params(module)
        thop_count = thop_macs(archs.build(make()).eval(), args.size)
        pub = PUBLISHED[name]
        out["models"][name] = {
            "architecture": archs.describe(module.spec),
            "published": pub,
            "params": params,
            "macs_paper": macs["paper"],
            "macs_exact": macs["exact"],
            "macs_thop": thop_count,
            "rel_error": {"params": rel(params, pub["params"]), "macs_paper": rel(macs["paper"], pub["macs"]),
                          "macs_exact": rel(macs["exact"], pub["macs"]),
                          "macs_thop": rel(thop_count, pub["macs"])},
        }
    out["note"] = ("macs_paper charges a ConvTranspose2d as output_elements x Cin x k^2 (thop's convention, the "
                   "papers' tables); macs_exact as input_elements x Cout x k^2, the multiply-adds actually done. "
                   "Both count convolutions only; thop also counts norms and activations.")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
