#!/usr/bin/env bash
# make demo: the whole SN-Net story on scikit-learn's handwritten digits (real images, offline),
# through the same entry points a user runs on ImageNet: train.py, distributed_train.sh, eval.py.
#   1. the anchors of configs/demo_digits.yaml (DeiT-Ti/S/B shapes at 1/8 width: 24/48/96,
#      32x32 input, patch 4), each trained from scratch by a plain single-anchor
#      train.py -c configs/demo_anchor.yaml run (reused when present);
#   2. the SN-Net over them: least-squares init, then a few epochs on 2 CPU processes;
#   3. eval.py sweeps every network: table, Pareto frontier, plot; then a comparison with the
#      committed results/demo/ (identical only on the CPU model that made them).
# Environment: PYTHON (default .venv/bin/python), DEMO_OUTPUT (run folders, default output/demo),
# DEMO_RESULTS (tables and plot, default output/demo/results; results/demo refreshes the committed
# files), DEMO_ARGS (extra train.py args, e.g. shorter runs in tests), DEMO_THREADS (CPU threads of
# the single-process anchor runs and the sweep, default 2: the count that made results/demo on a
# 2-core machine; train.py/eval.py default to 1, and the SN-Net stage runs 1 per torchrun worker).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUTPUT:-output/demo}
RESULTS=${DEMO_RESULTS:-$OUT/results}
read -r -a EXTRA <<< "${DEMO_ARGS:-}"
THREADS=${DEMO_THREADS:-2}
export PYTHON=$PY

CONFIG=configs/demo_digits.yaml
start=$SECONDS

# One line per anchor of $CONFIG, "name k=v k=v", so the anchors are written down only there.
mapfile -t anchors < <("$PY" -c '
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
for name, kwargs in zip(cfg["anchors"], cfg["anchor_kwargs"]):
    print(name, " ".join(f"{k}={v}" for k, v in kwargs.items()))
' "$CONFIG")
(( ${#anchors[@]} )) || { echo "error: no anchors read from $CONFIG" >&2; exit 1; }

ckpts=()
for line in "${anchors[@]}"; do
  name=${line%% *}
  kwargs=${line#* }
  exp="anchor-$name-${kwargs// /-}"  # the shape in the folder name: a changed width retrains
  ckpt="$OUT/$exp/last.pth.tar"
  if [[ -f "$ckpt" ]]; then
    echo "== [1/3] anchor $name: reusing $ckpt"
  else
    echo "== [1/3] anchor $name ($kwargs): training from scratch on digits"
    "$PY" train.py -c configs/demo_anchor.yaml --anchors "$name" --anchor-kwargs "$kwargs" \
      --output "$OUT" --experiment "$exp" --threads "$THREADS" "${EXTRA[@]}"
  fi
  ckpts+=("$ckpt")
done

echo "== [2/3] SN-Net over the ${#ckpts[@]} anchors: least-squares init, then training on 2 processes"
rm -rf "$OUT/snnet"
./distributed_train.sh 2 -c "$CONFIG" --anchor-checkpoints "${ckpts[@]}" \
  --output "$OUT" --experiment snnet "${EXTRA[@]}"

echo "== [3/3] sweeping every network"
"$PY" eval.py -c "$CONFIG" --resume "$OUT/snnet/last.pth.tar" --output "$RESULTS" --overwrite --threads "$THREADS"

# A newcomer's run next to the committed one: the numbers match only on the same CPU model.
COMMITTED=results/demo
if [[ "$(realpath -m "$RESULTS")" != "$(realpath -m "$COMMITTED")" && -f "$COMMITTED/stitches.csv" ]]; then
  echo
  "$PY" - "$RESULTS" "$COMMITTED" <<'PY'
import filecmp, sys
from pathlib import Path

from snnet.evaluate.results import read_results

new, old = map(Path, sys.argv[1:3])
if all(filecmp.cmp(new / f, old / f, shallow=False) for f in ("stitches.csv", "pareto.csv")):
    print(f"Same stitches.csv and pareto.csv as the committed {old}/, byte for byte.")
    sys.exit(0)
rows = {d: {r["cfg_id"]: r for r in read_results(d / "stitches.csv")} for d in (new, old)}
front = {d: read_results(d / "pareto.csv") for d in (new, old)}
def anchors(d):
    return " / ".join(f"{r['top1']:.1f}" for r in rows[d].values() if r["is_anchor"])
def best(d):
    return max(r["top1"] for r in rows[d].values())
changed = [c for c in rows[new] if c in rows[old] and rows[new][c]["top1"] != rows[old][c]["top1"]]
print(f"Compared with the committed {old}/ (made on another CPU model or with other settings; see docs/demo.md):")
print(f"  anchors top-1 {anchors(new)}% here vs {anchors(old)}% committed; frontier of {len(front[new])} vs "
      f"{len(front[old])} networks; best {best(new):.1f}% vs {best(old):.1f}%; top-1 differs for "
      f"{len(changed)} of {len(rows[new])} networks")
PY
fi

echo
echo "Done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s."
echo "Results: $RESULTS/stitches.csv (every network), $RESULTS/pareto.csv (frontier), $RESULTS/pareto.png (plot)"
