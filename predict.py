#!/usr/bin/env python3
"""Top-5 classes of image files from one network of a trained SN-Net, or from an exported network.

    python predict.py --resume output/train/RUN/model_best.pth.tar --stitch 12 photo.jpg photos/
    python predict.py --resume CKPT --stitch best --budget-flops 2.5G --csv predictions.csv photos/
    python predict.py --exported deit-2.5g.pt photos/

See ``snnet/cli.py`` for the options, ``snnet/evaluate/predict.py`` for what it does.
"""

import sys

from snnet.evaluate.predict import main

if __name__ == "__main__":
    sys.exit(main())
