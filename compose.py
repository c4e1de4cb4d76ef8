#!/usr/bin/env python3
"""Compose networks from fragments of pretrained networks without training (StitchNet).

    python compose.py --pool deit_tiny_patch16_224 deit_small_patch16_224 --pretrained --dataset digits \
        --stitch-images 32 --threshold 0.9 --total-threshold 0.5 --max-depth 3 --top-k 5 --output output/compose

See ``snnet/compose/`` for what it does and writes, ``python compose.py --help`` for the options.
"""

import sys

from snnet.compose.main import main

if __name__ == "__main__":
    sys.exit(main())
