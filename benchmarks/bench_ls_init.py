"""Least-squares init of the stitching layers vs a plain forward of the anchors on the same images.

    python benchmarks/bench_ls_init.py                       # DeiT-Ti + DeiT-S, 224 px, 100 images
    python benchmarks/bench_ls_init.py --anchors deit_tiny_patch16_224 deit_small_patch16_224 deit_base_patch16_224

Times ``net.init_stitching_layers(images)`` (the paper's 100 images) and the anchors' plain
``model(images)`` in eval mode under ``torch.no_grad`` (every anchor, same batches), interleaved,
and prints the median ratio. LS init has to run every anchor's blocks once too, so the ratio
is what the least-squares part costs on top.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from timing import interleaved_medians

from snnet import create_snnet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--anchors", nargs="+", default=["deit_tiny_patch16_224", "deit_small_patch16_224"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    net = create_snnet(args.anchors, img_size=args.img_size, num_classes=1000).eval()
    images = torch.randn(args.images, 3, args.img_size, args.img_size)

    def ls_init():
        net.init_stitching_layers(images, batch_size=args.batch_size)

    @torch.no_grad()
    def plain_forward():
        for batch in images.split(args.batch_size):
            for anchor in net.anchors:
                anchor(batch)

    plain_forward()  # warm-up
    ls, fw = interleaved_medians([ls_init, plain_forward], args.repeats)
    print(
        f"anchors {args.anchors} at {args.img_size}px, {args.images} images in batches of {args.batch_size}, "
        f"{torch.get_num_threads()} threads, {len(net.stitch_layers)} stitching layers / {net.num_stitches} networks, "
        f"{args.repeats} interleaved repeats"
    )
    print(f"anchors' plain forward: {fw:7.2f} s (median)")
    print(f"least-squares init:     {ls:7.2f} s (median)")
    print(f"ratio LS init / forward: {ls / fw:.3f}x")


if __name__ == "__main__":
    main()
