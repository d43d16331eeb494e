"""The tile grid of :class:`~napari_sam.predict.tiled_embedding.TiledPrompter`: windows, numbers, prompts.

Pure geometry, no embeddings: the plane is cut into tiles whose interiors are
``stride = tile - 2 * halo`` pixels apart; a tile's window is its interior
grown by ``halo`` on every side (``tile`` pixels, shifted to stay inside the
plane).  Windows are ``(r0, c0, r1, c1)`` in the plane's pixels, end
exclusive.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["TileGrid", "Window", "grid_layout", "needs_tiling"]

Window = tuple[int, int, int, int]


def needs_tiling(shape: tuple[int, int], input_size: int, *, factor: float = 2.0) -> bool:
    """Whether a plane of ``shape`` (H, W) should be prompted in tiles.

    True when its long side exceeds ``factor`` times the model's input size: a
    whole-plane embedding would shrink it more than ``factor`` times.
    """
    return max(int(shape[0]), int(shape[1])) > factor * int(input_size)


def grid_layout(tile: int, halo: int | None = None) -> dict[str, list[int]]:
    """The tile grid for tiles of ``tile`` px: ``{"tile_shape", "halo", "stride"}``.

    ``halo=None``: a quarter of the tile side (the default of
    :class:`~napari_sam.predict.tiled_embedding.TiledPrompter`).
    Two prompters with the same layout cut a plane into the same windows (JSON
    types, e.g. for a cache key).

    Examples
    --------
    >>> grid_layout(256)
    {'tile_shape': [256, 256], 'halo': [64, 64], 'stride': [128, 128]}
    """
    tile = int(tile)
    halo = tile // 4 if halo is None else int(halo)
    if not 0 <= halo < tile // 2:
        raise ValueError(f"halo must be between 0 and {tile // 2 - 1} for tiles of {tile} px; got {halo}.")
    return {"tile_shape": [tile, tile], "halo": [halo, halo], "stride": [tile - 2 * halo] * 2}


class TileGrid:
    """The :func:`grid_layout` of tiles of ``tile`` px over a plane of ``shape`` (H, W).

    Parameters
    ----------
    shape : (H, W)
    tile : int
        Side of a tile's window.
    halo : int, optional
        Overlap of a tile's window beyond its interior on each side; default a
        quarter of the tile side.

    Examples
    --------
    >>> grid = TileGrid((300, 200), 256)
    >>> grid.n_tiles(), grid.tile_window(grid.tile_index((290, 10)))
    ((3, 2), (44, 0, 300, 200))
    """

    def __init__(self, shape: tuple[int, int], tile: int, halo: int | None = None) -> None:
        self.tile = int(tile)
        layout = grid_layout(self.tile, halo)
        self.halo, self.stride = layout["halo"][0], layout["stride"][0]
        self.shape = (int(shape[0]), int(shape[1]))

    def layout(self) -> dict[str, list[int]]:
        """This grid's :func:`grid_layout`."""
        return grid_layout(self.tile, self.halo)

    def n_tiles(self) -> tuple[int, int]:
        """Tiles along rows and columns."""
        return tuple(max(1, math.ceil(s / self.stride)) for s in self.shape)  # type: ignore[return-value]

    def tile_index(self, point_rc: Any) -> tuple[int, int]:
        """The tile whose interior holds ``point_rc`` (row, col)."""
        n = self.n_tiles()
        return tuple(int(np.clip(math.floor(float(p) / self.stride), 0, k - 1))  # type: ignore[return-value]
                     for p, k in zip(point_rc, n))

    def tile_window(self, index: tuple[int, int]) -> Window:
        """The window ``(r0, c0, r1, c1)`` of tile ``index``: its interior plus the halo, inside the plane."""
        out = []
        for i, size in zip(index, self.shape):
            start = self._start(int(i), size)
            out.append((start, start + min(self.tile, size)))
        return (out[0][0], out[1][0], out[0][1], out[1][1])

    def _start(self, i: int, size: int) -> int:
        """First row (or column) of the window of tile ``i`` along an axis of ``size`` px."""
        return int(np.clip(i * self.stride - self.halo, 0, size - min(self.tile, size)))

    def tile_number(self, window: Window) -> int | None:
        """The grid tile whose window is ``window``, numbered row by row (``i * n_cols + j``); else None.

        Where several tiles share a window (a plane narrower than a tile) the
        first one's number is given, so each distinct window has one number.
        """
        n = self.n_tiles()
        index = []
        for start, stop, size, k in ((window[0], window[2], self.shape[0], n[0]),
                                     (window[1], window[3], self.shape[1], n[1])):
            start, stop = int(start), int(stop)
            # the window starts are non-decreasing in i: the first tile that reaches ``start``
            i = 0 if start <= 0 else -(-(start + self.halo) // self.stride)
            if i >= k or self._start(i, size) != start or stop - start != min(self.tile, size):
                return None
            index.append(i)
        return index[0] * n[1] + index[1]

    def windows(self) -> list[Window]:
        """The windows of every tile of the plane, row by row."""
        n = self.n_tiles()
        return list(dict.fromkeys(self.tile_window((i, j)) for i in range(n[0]) for j in range(n[1])))

    def _centred_window(self, extent: tuple[float, float, float, float], *, margin: float = 0.25) -> Window:
        """A window around ``extent`` (r0, c0, r1, c1): at least a tile, the extent plus ``margin`` of context."""
        out = []
        for lo, hi, size in ((extent[0], extent[2], self.shape[0]), (extent[1], extent[3], self.shape[1])):
            side = min(size, max(self.tile, math.ceil((hi - lo + 1) * (1 + 2 * margin))))
            start = int(np.clip(round((lo + hi + 1) / 2 - side / 2), 0, size - side))
            out.append((start, start + side))
        return (out[0][0], out[1][0], out[0][1], out[1][1])

    def _first_window(self, pts: np.ndarray | None, lab: np.ndarray | None, box: np.ndarray | None) -> Window:
        """Where a prompt is decoded first: the tile holding its first positive click or its box's centre.

        A window centred on the prompt instead when that tile misses a point
        or a corner of the box.
        """
        if box is not None:
            r0, c0, r1, c1 = box
            win = self.tile_window(self.tile_index(((r0 + r1) / 2, (c0 + c1) / 2)))
            if not inside(win, np.array([[r0, c0], [r1, c1]])):
                win = self._centred_window((r0, c0, r1, c1))
        else:
            positive = pts[lab > 0] if (lab > 0).any() else pts
            win = self.tile_window(self.tile_index(positive[0]))
        if pts is not None and len(pts) and not inside(win, pts):
            lo, hi = pts.min(0), pts.max(0)
            ext = (lo[0], lo[1], hi[0], hi[1])
            if box is not None:
                ext = (min(ext[0], box[0]), min(ext[1], box[1]), max(ext[2], box[2]), max(ext[3], box[3]))
            win = self._centred_window(ext)
        return win


def inside(win: Window, pts: np.ndarray) -> bool:
    """Whether every point of ``pts`` (N, 2) lies in the pixels of ``win``."""
    r0, c0, r1, c1 = win
    return bool(((pts[:, 0] >= r0) & (pts[:, 0] <= r1 - 1) & (pts[:, 1] >= c0) & (pts[:, 1] <= c1 - 1)).all())


def touches_inner_edge(mask: np.ndarray, win: Window, shape: tuple[int, int]) -> bool:
    """Whether ``mask`` (in ``win``'s frame) reaches a window side where the plane goes on."""
    if not mask.any():
        return False
    r0, c0, r1, c1 = win
    return bool((r0 > 0 and mask[0].any()) or (r1 < shape[0] and mask[-1].any())
                or (c0 > 0 and mask[:, 0].any()) or (c1 < shape[1] and mask[:, -1].any()))
