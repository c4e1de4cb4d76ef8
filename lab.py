#!/usr/bin/env python3
"""The stitching lab: a grid of cells (routes x adapters x lrs x seeds), each training its
stitching layer(s) over frozen anchors, in one pass over the data.

    python lab.py -c configs/lab/demo_digits.yaml [--output DIR] [--experiment NAME] [--cell-shard I/K]
    torchrun --nproc_per_node 8 lab.py -c configs/lab/resnet50_vit_s.yaml --data-dir /data/imagenet

See ``snnet/lab/`` for the config keys and the outputs.
"""

import sys

from snnet.lab.main import main

if __name__ == "__main__":
    sys.exit(main())
