"""Figure 7: the exact spectrum at checkpoints during GD.

Writes OUT/fig7/: PNG figure(s), arrays (.npz), results.json and report.md
(the paper's claims beside the numbers measured here).

    python examples/fig7_training_evolution.py                      # quick scale, into runs/
    python examples/fig7_training_evolution.py --scale paper --out runs-paper --resume
"""

import argparse

from spectra.experiments import run

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs")
parser.add_argument("--scale", default="quick", choices=["tiny", "quick", "paper"])
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
parser.add_argument("--force", action="store_true", help="replace an earlier run in OUT/fig7")
args = parser.parse_args()

results = run("fig7", args.out, scale=args.scale, seed=args.seed, resume=args.resume, force=args.force)
for claim in results["claims"]:
    # agrees / differs / n/a / "quick scale cannot show this", with its effect size, seeds and test
    print(f"[{claim['verdict']}] {claim['topic']}: {claim['ours']} ({claim['test']})")
print(f"report: {args.out}/fig7/report.md")
