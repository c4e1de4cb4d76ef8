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

from snnet.evaluate.main import main as eval_main
from snnet.evaluate.results import read_results

# score column -> (label, sign: +1 if higher should mean more accurate)
SCORES = {
    "cka": ("linear CKA at the junction", 1),
    "ls_residual": ("LS relative residual (negated)", -1),
    "ls_top1": ("top-1 after LS init, before training", 1),
    "flops": ("FLOPs (baseline)", 1),
}


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trained",
        required=True,
        nargs="+",
        metavar="CSV",
        help="stitches.csv of trained SN-Nets over these anchors (eval.py); one column each",
    )
    parser.add_argument("--output", required=True, help="folder for compat.csv and correlation.md")
    ours, eval_args = parser.parse_known_args(argv)
    out = Path(ours.output)
    code = eval_main(eval_args + ["--compatibility", "--output", str(out), "--overwrite", "--log-interval", "0"])
    if code:
        return code
    with open(out / "compat.csv", newline="") as f:
        compat = {int(r["cfg_id"]): r for r in csv.DictReader(f)}
    ids = [i for i, r in sorted(compat.items()) if r["cka"] != ""]
    tables = {path: {r["cfg_id"]: r for r in read_results(path)} for path in ours.trained}
    for path, trained in tables.items():
        mismatch = [i for i in ids if i not in trained or trained[i]["name"] != compat[i]["name"]]
        if mismatch:
            print(f"error: {path} is not a sweep of the same networks (cfg_id {mismatch[0]})", file=sys.stderr)
            return 2
    # all stitches, then each anchor pair alone (FLOPs differ mostly between pairs)
    groups = {"all": ids}
    for i in ids:
        groups.setdefault(
            compat[i]["name"].split("[")[0] + " > " + compat[i]["name"].split(">")[1].split("[")[0], []
        ).append(i)
    lines = [
        "Spearman rank correlation (rho, p-value) of each score with the trained top-1 of the stitched networks:",
        "",
    ]
    for group, members in groups.items():
        lines += [
            f"{group} ({len(members)} stitches):",
            "",
            "| score (before training) | " + " | ".join(f"vs {p}" for p in ours.trained) + " |",
            "| --- |" + " --- |" * len(ours.trained),
        ]
        for column, (label, sign) in SCORES.items():
            cells = []
            for trained in tables.values():
                values = [
                    sign * (float(trained[i][column]) if column == "flops" else float(compat[i][column]))
                    for i in members
                ]
                rho, p = spearmanr(values, [trained[i]["top1"] for i in members])
                cells.append(f"{rho:+.3f} (p {p:.2g})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    (out / "correlation.md").write_text(text)
    print("\n" + text + f"Wrote {out / 'correlation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
