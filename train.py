#!/usr/bin/env python3
"""Train an SN-Net (or, with one anchor, a plain timm model) like timm's train.py.

    python train.py --dataset digits --img-size 32 --anchors deit_tiny_patch16_224 deit_small_patch16_224 ...
    ./distributed_train.sh 8 --data-dir /data/imagenet -c configs/deit_ti_s_b.yaml

See ``snnet/cli.py`` for the options and ``snnet/train/trainer.py`` for the checkpoint format and how
resuming works.
"""

import sys

from snnet.train.main import main

if __name__ == "__main__":
    sys.exit(main())
