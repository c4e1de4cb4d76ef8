#!/usr/bin/env bash
# make demo: the whole SN-Net story on scikit-learn's handwritten digits (real images, offline),
# through the same entry points a user runs on ImageNet: train.py, distributed_train.sh, eval.py.
#   1. three DeiT-shaped anchors (Ti/S/B at 1/4 width: 48/96/192, 32x32 input, patch 4),
#      each trained from scratch by a plain single-anchor train.py run (reused when present);
#   2. the SN-Net over them: least-squares init, then a few epochs on 2 CPU processes;
#   3. eval.py sweeps every network: table, Pareto frontier, plot.
# Environment: PYTHON (default .venv/bin/python), DEMO_OUTPUT (run folders, default output/demo),
# DEMO_RESULTS (default results/demo), DEMO_ARGS (extra train.py args, e.g. shorter runs in tests).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUTPUT:-output/demo}
RESULTS=${DEMO_RESULTS:-results/demo}
read -r -a EXTRA <<< "${DEMO_ARGS:-}"
export PYTHON=$PY

names=(deit_tiny_patch16_224 deit_small_patch16_224 deit_base_patch16_224)
kwargs=("embed_dim=48 num_heads=3" "embed_dim=96 num_heads=6" "embed_dim=192 num_heads=12")
start=$SECONDS

ckpts=()
for i in 0 1 2; do
  exp="anchor-${names[i]}"
  ckpt="$OUT/$exp/last.pth.tar"
  if [[ -f "$ckpt" ]]; then
    echo "== [1/3] anchor ${names[i]}: reusing $ckpt"
  else
    echo "== [1/3] anchor ${names[i]} (${kwargs[i]}): training from scratch on digits"
    "$PY" train.py -c configs/demo_anchor.yaml --anchors "${names[i]}" --anchor-kwargs "${kwargs[i]}" \
      --output "$OUT" --experiment "$exp" "${EXTRA[@]}"
  fi
  ckpts+=("$ckpt")
done

echo "== [2/3] SN-Net over the three anchors: least-squares init, then training on 2 processes"
rm -rf "$OUT/snnet"
./distributed_train.sh 2 -c configs/demo_digits.yaml --anchor-checkpoints "${ckpts[@]}" \
  --output "$OUT" --experiment snnet "${EXTRA[@]}"

echo "== [3/3] sweeping every network"
"$PY" eval.py -c configs/demo_digits.yaml --resume "$OUT/snnet/last.pth.tar" --output "$RESULTS" --overwrite

echo
echo "Done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s."
echo "Results: $RESULTS/stitches.csv (every network), $RESULTS/pareto.csv (frontier), $RESULTS/pareto.png (plot)"
