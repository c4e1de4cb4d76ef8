#!/usr/bin/env bash
# Writes tests/data/two_way_lora_8687b96.* with the code at commit 8687b96 (run from the repo root).
set -euo pipefail
PY=${PYTHON:-python}
W=$(mktemp -d)
MODEL=(--dataset digits --img-size 8 --anchors deit_tiny_patch16_224 deit_small_patch16_224
       --model-kwargs patch_size=4 mlp_ratio=1
       --anchor-kwargs "embed_dim=8 num_heads=1 depth=3" "embed_dim=12 num_heads=2 depth=6"
       --stitching two-way --stitch-layer lora --lora-rank 2 --workers 0 --device cpu)
TRAIN=(-b 32 --opt adamw --lr 3e-3 --min-lr 3e-3 --warmup-epochs 0 --no-aug --smoothing 0
       --max-val-batches 1 --log-interval 15 --seed 0)
"$PY" train.py "${MODEL[@]}" "${TRAIN[@]}" --epochs 2 --stop-epoch 1 --ls-init --ls-init-images 32 --output "$W" --experiment fx
"$PY" eval.py --resume "$W/fx/last.pth.tar" --dataset digits --workers 0 -b 120 --device cpu --log-interval 0 --output "$W/eval"
"$PY" train.py "${MODEL[@]}" "${TRAIN[@]}" --epochs 2 --max-steps-per-epoch 8 --resume "$W/fx/last.pth.tar" --output "$W" --experiment resumed
xz -9e -c "$W/fx/last.pth.tar" > tests/data/two_way_lora_8687b96.pth.tar.xz
cp "$W/eval/stitches.csv" tests/data/two_way_lora_8687b96_stitches.csv
cp "$W/resumed/steps.jsonl" tests/data/two_way_lora_8687b96_resumed_steps.jsonl
rm -rf "$W"
