#!/usr/bin/env python3
"""HTTP inference server for a trained SN-Net: batches requests per network and, with --slo-ms,
switches along the sweep's frontier to hold a p99 latency target under load.

    python serve.py --resume output/train/RUN/last.pth.tar --slo-ms 50
    curl -F images=@photo.jpg http://127.0.0.1:8000/predict
    python serve.py --exported frontier.pt --port 8080

See ``snnet/cli.py`` for the options, ``snnet/serve/`` for what it does.
"""

import sys

from snnet.serve.main import main

if __name__ == "__main__":
    sys.exit(main())
