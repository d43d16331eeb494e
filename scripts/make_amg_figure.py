"""Draw docs/images/amg_tiles.png: AMG point grid and crop boxes, and tiles with halo.

Run: ``python scripts/make_amg_figure.py`` (needs matplotlib, the ``docs`` extra).
Uses only the geometry functions of napari_sam (no model).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from napari_sam.automatic.grid import build_all_layer_point_grids, generate_crop_boxes  # noqa: E402
from napari_sam.tiled.tiles import tile_grid  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "amg_tiles.png"


def blobs(shape: tuple[int, int], n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    img = rng.normal(0.15, 0.03, size=shape)
    for _ in range(n):
        r, c, rad = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(6, 16)
        img[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] = rng.uniform(0.6, 1.0)
    return img


def main() -> None:
    shape = (300, 400)
    img = blobs(shape, 45)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))

    ax = axes[0]
    ax.imshow(img, cmap="gray")
    boxes, layers = generate_crop_boxes(shape, 1, 512 / 1500)
    grids = build_all_layer_point_grids(8, 1, 2)
    pts = grids[0] * np.array(shape)
    ax.plot(pts[:, 1], pts[:, 0], "o", ms=3, color="yellow", label="layer-0 grid (8 x 8 here, 32 x 32 default)")
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
    for k, ((r0, c0, r1, c1), col) in enumerate(zip(boxes[layers == 1], colors)):
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, lw=2, ec=col, ls="--"))
        g = grids[1] * np.array([r1 - r0, c1 - c0]) + np.array([r0, c0])
        ax.plot(g[:, 1], g[:, 0], "+", ms=5, color=col, label="layer-1 crop + its grid" if k == 0 else None)
    ax.set_title("AMG: point grid (layer 0)\nand overlapping crops (crop_n_layers=1)", fontsize=10)
    ax.legend(loc="lower left", fontsize=7, framealpha=0.8)
    ax.set_axis_off()

    ax = axes[1]
    ax.imshow(img, cmap="gray")
    tiles = tile_grid(shape, (150, 200), 40)
    for t in tiles:
        r0, c0, r1, c1 = t.core
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, lw=2, ec="cyan"))
    t = tiles[0]
    w0, w1, w2, w3 = t.window
    ax.add_patch(Rectangle((w1 - 0.5, w0 - 0.5), w3 - w1, w2 - w0, fill=True, alpha=0.18, fc="magenta", ec="magenta", lw=2))
    ax.text(w1 + 4, w2 - 8, "tile (0, 0): core + halo window", color="magenta", fontsize=8)
    ax.plot([(t.core[1] + t.core[3]) / 2], [(t.core[0] + t.core[2]) / 2], "x", color="cyan")
    ax.set_title("Tiling: cores partition the image (cyan)\neach tile is segmented on core + halo (magenta)", fontsize=10)
    ax.set_axis_off()
    fig.text(
        0.5, 0.02,
        "A mask reaching an inner window edge is dropped; a mask is owned by the tile whose core holds its "
        "bounding-box centre; duplicates from neighbours (mask IoU > 0.5) become one label.",
        ha="center", fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.93))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
