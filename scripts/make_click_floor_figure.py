"""Draw benchmarks/figures/click_floor.png: a click's time against the official click, its products alone, the target.

Reads the JSON written by ``python benchmarks/predictor.py --models vit_b --floor --json FILE``
(paired rounds: ours and the click's matrix products alone, each against the official click) and
draws, in units of the official click's time, the median ratio with its quartiles and the
issue's target (30 ms against the official 121 ms, 0.25).

Usage: python scripts/make_click_floor_figure.py [benchmark.json] [output.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
TARGET = 30.0 / 121.0  # the click target as a ratio of the official click


def main(results: Path, out: Path) -> None:
    data = json.loads(results.read_text(encoding="utf-8"))
    row = next(r for r in data["results"] if "products_alone" in r)
    bars = [
        ("official click", 1.0, (1.0, 1.0), row["paired_clicks"]["official_ms_median"]),
        ("our click", row["paired_clicks"]["ratio_median"], row["paired_clicks"]["ratio_quartiles"],
         row["paired_clicks"]["ours_ms_median"]),
        ("its matrix products alone", row["products_alone"]["ratio_median"],
         row["products_alone"]["ratio_quartiles"], row["products_alone"]["ours_ms_median"]),
    ]
    fig, ax = plt.subplots(figsize=(8, 2.8))
    for i, (label, ratio, (q1, q3), ms) in enumerate(bars):
        ax.barh(i, ratio, color=("0.6", "tab:blue", "tab:orange")[i])
        if q3 > q1:
            ax.plot([q1, q3], [i, i], color="black", lw=2)
        ax.text(max(ratio, q3) + 0.015, i, f"{ratio:.2f}  ({ms:.1f} ms)", va="center")
    ax.axvline(TARGET, color="tab:red", ls="--", label=f"target {TARGET:.2f} (30 ms against the official 121 ms)")
    ax.legend(loc="lower right", fontsize=9)
    ax.set_yticks(range(len(bars)), [b[0] for b in bars])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.2)
    ax.set_xlabel("time / the official click's time (same run, alternating rounds; black: quartiles)")
    env = data["environment"]
    ax.set_title(f"{row['model']}, one click, {env['threads']} threads, {env['image']}, torch {env['torch']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path,
                        default=ROOT / "benchmarks/results/predictor_vit_b_2026-11-23.json",
                        help="benchmarks/predictor.py --floor --json output (default: %(default)s)")
    parser.add_argument("output", nargs="?", type=Path, default=ROOT / "benchmarks/figures/click_floor.png",
                        help="PNG to write (default: %(default)s)")
    args = parser.parse_args()
    main(args.results, args.output)
