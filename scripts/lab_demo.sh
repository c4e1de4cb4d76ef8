#!/usr/bin/env bash
# The stitching lab on scikit-learn's digits (docs/lab.md, "The stitching lab"): a small CNN and a small
# ViT trained on the digits, then configs/lab/demo_digits.yaml's grid of CNN -> ViT and ViT -> CNN
# cells (2 gaps each way x 3 adapter kinds x 2 seeds), each cell training its stitching layer
# over the two frozen anchors.
#   1. anchors (reused when present): train.py -c configs/demo_anchor.yaml --epochs 30, one anchor
#      each: resnet18 at 1/4 width (16/32/64/128 channels) and deit_tiny_patch16_224 at 48 wide;
#   2. lab.py -c configs/lab/demo_digits.yaml.
# Environment: PYTHON (default .venv/bin/python), LAB_DEMO_OUTPUT (default output/lab-demo: the
# anchors' run folders and the lab folder 'grid'), LAB_DEMO_ARGS (extra train.py args for the anchors).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${LAB_DEMO_OUTPUT:-output/lab-demo}
read -r -a EXTRA <<< "${LAB_DEMO_ARGS:-}"
# tiny models on a shared 2-core machine: one thread per process is several times faster
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$SECONDS

if [[ ! -f "$OUT/anchor-resnet18/last.pth.tar" ]]; then
  echo "== [1/2] CNN anchor: resnet18, channels 16/32/64/128, trained on digits"
  "$PY" train.py -c configs/demo_anchor.yaml --anchors resnet18 --model-kwargs \
    --anchor-kwargs "channels=[16,32,64,128] stem_width=16" --epochs 30 --output "$OUT" --experiment anchor-resnet18 \
    "${EXTRA[@]}"
fi
if [[ ! -f "$OUT/anchor-deit_tiny/last.pth.tar" ]]; then
  echo "== [1/2] ViT anchor: deit_tiny_patch16_224, 48 wide, depth 4, patch 4, trained on digits"
  "$PY" train.py -c configs/demo_anchor.yaml --anchors deit_tiny_patch16_224 \
    --anchor-kwargs "embed_dim=48 num_heads=3" --epochs 30 --output "$OUT" --experiment anchor-deit_tiny \
    "${EXTRA[@]}"
fi

echo "== [2/2] the lab grid"
lab_start=$SECONDS
"$PY" lab.py -c configs/lab/demo_digits.yaml --output "$OUT" --experiment grid
echo "Lab grid in $(( (SECONDS - lab_start) / 60 )) min $(( (SECONDS - lab_start) % 60 )) s; all in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s."
echo "Results: $OUT/grid/cells.csv, trajectory.csv, top1_vs_depth.png, top1_vs_flops.png, matrix_<adapter>.png"
