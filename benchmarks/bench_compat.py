"""How well do scores computed before training predict a stitch's accuracy after it?

Runs ``eval.py --compatibility`` (least-squares init of an untrained SN-Net, then per stitch:
linear CKA at the junction, the LS fit's relative residual, and the LS-initialised network's
top-1) and ranks each score against the trained top-1 of the same networks, Spearman's rho over
the stitched networks (anchors left out):

    .venv/bin/python benchmarks/bench_compat.py --trained results/demo/stitches.csv --output results/compat \\
        -c configs/demo_digits.yaml --anchor-checkpoints output/demo/anchor-*/last.pth.tar   # after make demo

Other arguments go to eval.py. Writes ``OUT/compat.csv`` (eval.py's) and ``OUT/correlation.md``.
FLOPs, the score anyone has for free, is ranked too as the baseline.
"""
from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

from scipy.stats import spearmanr

from snnet.evaluation import main as eval_main
from snnet.evaluation import read_results

# score column -> (label, sign: +1 if higher should mean more accurate)
SCORES = {"cka": ("linear CKA at the junction", 1), "ls_residual": ("LS relative residual (negated)", -1),
          "ls_top1": ("top-1 after LS init, before training", 1), "flops": ("FLOPs (baseline)", 1)}


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", required=True, help="stitches.csv of the trained SN-Net (eval.py)")
    parser.add_argument("--output", required=True, help="folder for compat.csv and correlation.md")
    ours, eval_args = parser.parse_known_args(argv)
    out = Path(ours.output)
    code = eval_main(eval_args + ["--compatibility", "--output", str(out), "--overwrite", "--log-interval", "0"])
    if code:
        return code
    with open(out / "compat.csv", newline="") as f:
        compat = {int(r["cfg_id"]): r for r in csv.DictReader(f)}
    trained = {r["cfg_id"]: r for r in read_results(ours.trained)}
    ids = [i for i, r in sorted(compat.items()) if r["cka"] != ""]
    mismatch = [i for i in ids if i not in trained or trained[i]["name"] != compat[i]["name"]]
    if mismatch:
        print(f"error: {ours.trained} is not a sweep of the same networks (cfg_id {mismatch[0]})", file=sys.stderr)
        return 2
    target = [trained[i]["top1"] for i in ids]
    lines = [f"Spearman rank correlation with the trained top-1 ({ours.trained}), {len(ids)} stitched networks:", "",
             "| score (before training) | Spearman rho | p-value |", "| --- | --- | --- |"]
    for column, (label, sign) in SCORES.items():
        values = [sign * (float(trained[i][column]) if column == "flops" else float(compat[i][column])) for i in ids]
        rho, p = spearmanr(values, target)
        lines.append(f"| {label} | {rho:+.3f} | {p:.3g} |")
    text = "\n".join(lines) + "\n"
    (out / "correlation.md").write_text(text)
    print("\n" + text + f"Wrote {out / 'correlation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
