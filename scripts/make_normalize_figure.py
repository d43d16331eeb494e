"""Draw docs/images/normalize.png: why contrast limits are percentiles, estimated once.

A synthetic 16-bit fluorescence-like image with a few hot pixels is converted to
SAM's RGB uint8 three ways: min/max stretch (hot pixels crush the range),
percentile stretch (napari_sam.normalize defaults), and per-tile percentile
stretch (tiles get different contrasts: what tiling must not do).

Usage: python scripts/make_normalize_figure.py [output.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from napari_sam.normalize import estimate_contrast_limits, to_rgb_uint8  # noqa: E402


def synthetic_cells(shape=(256, 384), seed=0) -> np.ndarray:
    """uint16 image: blurred blobs, brighter to the right, on a dim noisy background."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape)
    for _ in range(40):
        r, c = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        rr, cc = np.ogrid[: shape[0], : shape[1]]
        image[(rr - r) ** 2 + (cc - c) ** 2 < rng.uniform(40, 200)] = rng.uniform(300, 1000) * (1 + 3 * c / shape[1])
    image = ndimage.gaussian_filter(image, 2) + 200 + rng.normal(0, 20, shape)
    hot = rng.integers(0, image.size, size=12)
    image.flat[hot] = 60000  # hot pixels / cosmic rays
    return np.clip(image, 0, 65535).astype(np.uint16)


def main(out: Path) -> None:
    image = synthetic_cells()
    minmax = to_rgb_uint8(image, contrast_limits=(image.min(), image.max()))
    limits = estimate_contrast_limits(image)
    whole = to_rgb_uint8(image, contrast_limits=limits)
    half = image.shape[1] // 2
    per_tile = np.concatenate([to_rgb_uint8(image[:, :half]), to_rgb_uint8(image[:, half:])], axis=1)

    panels = [
        (minmax, f"min/max ({image.min()}..{image.max()}): hot pixels crush the range"),
        (whole, f"percentiles 0.5-99.5 ({limits[0, 0]:.0f}..{limits[0, 1]:.0f}), once per image"),
        (per_tile, "percentiles per tile: the two halves differ (avoid)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (rgb, title) in zip(axes, panels):
        ax.imshow(rgb)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    axes[2].axvline(half - 0.5, color="yellow", lw=1, ls="--")
    fig.suptitle("uint16 image -> SAM's RGB uint8 (napari_sam.normalize.to_rgb_uint8)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", type=Path, default=Path(__file__).resolve().parents[1] / "docs/images/normalize.png",
                        help="PNG to write (default: %(default)s)")
    main(parser.parse_args().output)
