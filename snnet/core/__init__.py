"""The SN-Net itself: routes (segments of anchors joined by stitching layers), the stitching rules
that enumerate them, stitching-layer kinds, the SNNet module, least-squares init and FLOPs."""
