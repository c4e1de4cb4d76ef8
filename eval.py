#!/usr/bin/env python3
"""Evaluate every network of a trained SN-Net from one pass over the data, then pick and ship.

    python eval.py -c configs/deit_ti_s_b.yaml --resume output/train/RUN/last.pth.tar --data-dir /data/imagenet
    torchrun --nproc_per_node 8 eval.py -c configs/deit_ti_s_b.yaml --resume ... --output results/deit
    python eval.py -c configs/deit_ti_s_b.yaml --flops-only --output results/flops
    python eval.py ... --budget-flops 2.5G --export best --export-path deit_2.5G.pt

See ``snnet/evaluate/main.py`` for what it does and writes, ``snnet/cli.py`` for the options.
"""

import sys

from snnet.evaluate.main import main

if __name__ == "__main__":
    sys.exit(main())
