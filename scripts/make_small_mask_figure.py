"""Draw benchmarks/figures/small_mask_threshold.png: how the built-in model's small-mask rule was picked.

Reads the selection grid stored in the built-in model's json
(``"small_mask_threshold_tuning"``, measured on selection seeds, never on the
evaluation images) and plots the mean single-click mIoU against the diameter
below which a click is re-run at a higher threshold, one line per threshold.

Usage: python scripts/make_small_mask_figure.py [output.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HISTORY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "builtin_model_history.json"


def main(out: Path) -> None:
    info = json.loads(HISTORY.read_text(encoding="utf-8"))
    tuning = info["small_mask_threshold_tuning"]
    d_picked, t_picked = tuning["picked"]  # for model v2 (v3 ships the rule off)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    grid = tuning["grid_point_miou_nuclei_636"]
    left.axhline(grid["0.0"], color="k", ls="--", lw=1, label="no rule (0.0 everywhere)")
    for t, row in grid.items():
        if isinstance(row, dict):
            d = sorted(row, key=float)
            left.plot([float(v) for v in d], [row[v] for v in d], "o-", ms=3, label=f"re-run at {t}")
    left.set_title("nuclei selection clicks (636): which threshold", fontsize=10)
    left.set_ylabel("single-click mIoU (selection images)")
    left.legend(fontsize=8, loc="lower left")
    kinds = tuning["grid_by_kind_t1.5"]
    d = sorted((k for k in kinds if k.isdigit()), key=float)
    for kind, colour in (("nuclei", "C0"), ("cells", "C3"), ("weighted", "k")):
        label = "pool-weighted (0.6 / 0.25 / 0.15)" if kind == "weighted" else kind
        right.plot([float(v) for v in d], [kinds[v][kind] for v in d], "o-", ms=3, color=colour, label=label)
        right.axhline(kinds["no rule"][kind], color=colour, ls="--", lw=1)
    right.plot([d_picked], [kinds[str(d_picked)]["weighted"]], "r*", ms=14, label=f"shipped: {d_picked} px, {t_picked}")
    right.set_title(f"at {t_picked}, by kind (dashed: no rule): which diameter", fontsize=10)
    right.legend(fontsize=8, loc="lower left")
    for ax in (left, right):
        ax.set_xlabel("re-run clicks whose mask is smaller than a disk of D px")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", type=Path, default=Path("benchmarks/figures/small_mask_threshold.png"),
                        help="PNG to write (default: %(default)s)")
    main(parser.parse_args().output)
