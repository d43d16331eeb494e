"""Interactive prompts on planes much larger than the model's input: embeddings per tile.

A plane of 4096 x 4096 pixels squeezed into one embedding at the model's input
size (256 px for the built-in model, 1024 px for SAM) turns a nucleus into a
pixel or two.  :class:`TiledPrompter` instead embeds, at native resolution,
only the tiles a prompt needs:

* the plane is cut into a grid of tiles whose *interiors* are
  ``input_size - 2 * halo`` pixels apart; each tile's window is its interior
  grown by ``halo`` on every side (``input_size`` pixels, shifted to stay inside
  the plane), so an object smaller than the halo whose prompt lies in a tile's
  interior is entirely inside that tile's window;
* a prompt is decoded in the tile whose interior holds it (the first positive
  click, or a box's centre);
* when the mask reaches the window's edge where the plane goes on (an object
  crossing tiles, larger than the halo), the prompt is decoded again in a
  window centred on the object (as large as the object needs, resized to the
  input size only when it does not fit), and that mask is kept;
* embeddings are kept in memory, least recently used dropped first; with a
  ``store`` (:class:`TileStore`, e.g. the on-disk embedding cache of the
  napari plugin) the grid tiles are also read from and written to it, under
  their :meth:`TiledPrompter.tile_number`.  Windows centred on objects stay
  in memory only.

Works with a :class:`~napari_sam.predict.predictor.Predictor` or a
:class:`~napari_sam.predict.pipeline.PromptPipeline` (whose zoom then works
inside the tile).  Contrast limits must be given once for the whole plane so
that every tile is normalised alike.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from napari_sam.normalize import to_rgb_uint8
from napari_sam.predict._tile_grid import TileGrid, Window, grid_layout, inside, needs_tiling, touches_inner_edge
from napari_sam.progress import CancelToken, ProgressCallback, check_cancelled, report

__all__ = ["TileStore", "TiledPrediction", "TiledPrompter", "grid_layout", "needs_tiling"]


class TileStore(Protocol):
    """Where :class:`TiledPrompter` keeps grid-tile embeddings beyond its memory (e.g. on disk).

    ``number`` is :meth:`TiledPrompter.tile_number`; ``pixels`` the tile's
    window of the plane as read (before normalisation), for the store to check
    that an entry was computed from these very pixels.
    """

    def get(self, number: int, pixels: np.ndarray) -> Any:
        """The stored embedding of tile ``number``, or None."""

    def put(self, number: int, pixels: np.ndarray, embedding: Any) -> None:
        """Store the embedding of tile ``number``."""

    def has(self, number: int, pixels: np.ndarray) -> bool:
        """Whether tile ``number`` is stored."""


@dataclass
class TiledPrediction:
    """What :meth:`TiledPrompter.predict` returns; unpacks as ``masks, scores, logits``.

    Attributes
    ----------
    masks : (C, H, W) bool array
        In the whole plane's frame.
    scores : (C,) float32 array
    logits : (C, m, m) float32 array
        Low-res logits in the frame of ``window`` (not the plane).
    window : (r0, c0, r1, c1)
        The plane window the prompt was decoded in.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    window: Window

    def __iter__(self):
        return iter((self.masks, self.scores, self.logits))


class TiledPrompter(TileGrid):
    """Prompt a large plane through embeddings of the tiles around each prompt.

    The grid (``n_tiles``, ``tile_index``, ``tile_window``, ``tile_number``,
    ``windows``, ``layout``) is its :class:`~napari_sam.predict._tile_grid.TileGrid`
    over the plane.

    Parameters
    ----------
    predictor : Predictor or PromptPipeline
        Its ``image_size`` is the tile side.  Its current image is replaced.
    plane : array-like, shape (H, W) or (H, W, C)
        The plane (numpy, dask or zarr; only the windows used are read).
    channel_axis : {None, -1}, keyword-only
        -1 for a trailing channel axis (RGB), None for grayscale.
    contrast_limits : (2,) or (C, 2) array-like, optional, keyword-only
        Limits of the whole plane (or stack); None: estimated per tile, which
        gives tiles different contrast, so pass them.
    halo : int, optional, keyword-only
        Overlap of a tile's window beyond its interior on each side; default a
        quarter of the tile side.
    max_tiles : int, keyword-only
        Embeddings kept in memory.
    store : TileStore, optional, keyword-only
        Grid tiles missing from memory are read from it before the encoder
        runs, and tiles the encoder computes are written to it (windows
        centred on objects crossing tiles are kept in memory only).  The
        store must belong to this plane, contrast limits and
        :func:`grid_layout`.
    """

    def __init__(self, predictor: Any, plane: Any, *, channel_axis: int | None = None,
                 contrast_limits: Any = None, halo: int | None = None, max_tiles: int = 32,
                 store: TileStore | None = None) -> None:
        if channel_axis not in (None, -1, len(getattr(plane, "shape", ())) - 1):
            raise ValueError("channel_axis must be None (grayscale) or -1 (channels last) for tiled prompts.")
        self.predictor = predictor
        self.plane = plane
        self.channel_axis = None if channel_axis is None else -1
        self.contrast_limits = contrast_limits
        super().__init__(plane.shape, predictor.image_size, halo)
        self.max_tiles = max(1, int(max_tiles))
        self._cache: OrderedDict[Window, tuple[Any, np.ndarray | None]] = OrderedDict()
        self._held: Window | None = None
        self.store = store
        #: number of encoder runs (tiles and object windows embedded)
        self.n_encoded = 0
        #: number of tile embeddings read from ``store``
        self.n_loaded = 0

    # ---------------------------------------------------------------- embeddings
    def cached_windows(self) -> list[Window]:
        """Windows whose embeddings are in memory, least recently used first."""
        return list(self._cache)

    def invalidate(self) -> None:
        """Forget which tile the predictor holds (call after the predictor was given another image)."""
        self._held = None

    def hold(self, window: Window) -> None:
        """Make the predictor hold the embedding of ``window`` (from memory, the store, or the encoder)."""
        if self._held == window:
            return
        p = self.predictor
        if window in self._cache:
            self._cache.move_to_end(window)
            emb, rgb = self._cache[window]
            if rgb is not None:
                p.set_embedding(emb, image=rgb)
            else:
                p.set_embedding(emb)
            self._held = window
            return
        r0, c0, r1, c1 = window
        crop = np.asarray(self.plane[r0:r1, c0:c1])
        number = None if self.store is None else self.tile_number(window)
        stored = None if number is None else self.store.get(number, crop)
        hit = stored is not None and tuple(stored.original_size) == crop.shape[:2]
        zooms = hasattr(p, "options")  # a PromptPipeline zooms inside the tile: it needs the pixels
        rgb = None if hit and not zooms else to_rgb_uint8(crop, channel_axis=self.channel_axis,
                                                          contrast_limits=self.contrast_limits)
        keep_rgb = rgb if zooms else None
        if hit:
            if keep_rgb is not None:
                p.set_embedding(stored, image=keep_rgb)
            else:
                p.set_embedding(stored)
            self.n_loaded += 1
            emb = stored
        else:
            p.set_image(rgb)
            self.n_encoded += 1
            emb = p.get_embedding()
            if number is not None:
                self.store.put(number, crop, emb)
        self._cache[window] = (emb, keep_rgb)
        self._held = window
        while len(self._cache) > self.max_tiles:
            self._cache.popitem(last=False)

    def embed_all(self, *, progress: ProgressCallback | None = None, cancel: CancelToken = None,
                  guard: Callable[[], AbstractContextManager[Any]] | None = None) -> int:
        """Embed every tile of the plane, so that later prompts need no encoder run.

        Without a ``store`` the tiles are kept in memory (``max_tiles`` grows
        to the number of tiles plus 8 windows around objects crossing tiles)
        and those in memory already are skipped.  With a ``store`` every tile
        is written to it (tiles stored already are skipped, tiles in memory
        are written without encoding) and memory keeps its ``max_tiles``.
        ``guard()`` is entered around each tile (e.g. a lock shared with the
        prompts); ``cancel`` is checked between tiles.  Returns the number of
        tiles.
        """
        wins = self.windows()
        if self.store is None:
            self.max_tiles = max(self.max_tiles, len(wins) + 8)
        for k, win in enumerate(wins):
            check_cancelled(cancel)
            with guard() if guard is not None else nullcontext():
                self._embed_one(win)
            report(progress, k + 1, len(wins), f"embedding tile {k + 1}/{len(wins)}")
        return len(wins)

    def _embed_one(self, win: Window) -> None:
        """Make sure tile ``win`` is in the store (with one) or in memory (without one)."""
        if self.store is None:
            if win not in self._cache:
                self.hold(win)
            return
        number = self.tile_number(win)
        crop = np.asarray(self.plane[win[0]:win[2], win[1]:win[3]])
        if self.store.has(number, crop):
            return
        if win in self._cache:
            self.store.put(number, crop, self._cache[win][0])
        else:
            self.hold(win)

    def prefetch(self, point_rc: Any) -> Window:
        """Embed the tile holding ``point_rc`` (e.g. where the user is about to click); returns its window."""
        window = self.tile_window(self.tile_index(point_rc))
        self.hold(window)
        return window

    # ------------------------------------------------------------------ prompts
    def _decode(self, win: Window, pts, lab, box, mask_input, multimask: bool):
        self.hold(win)
        off = np.array(win[:2], dtype=np.float64)
        wp = None if pts is None else pts - off
        wb = None if box is None else box - np.concatenate([off, off])
        masks, scores, logits = self.predictor.predict(wp, lab, wb, mask_input, multimask=multimask)
        return np.asarray(masks, bool), np.asarray(scores, np.float32), np.asarray(logits, np.float32)

    def predict(self, points_rc: Any = None, point_labels: Any = None, box_rc: Any = None,
                mask_input: Any = None, *, multimask: bool = True, window: Window | None = None) -> TiledPrediction:
        """Masks for one prompt, decoded in the tile that holds it (see the module docstring).

        Parameters
        ----------
        points_rc : (N, 2) array-like, optional
            ``(row, col)`` in the plane's pixels.
        point_labels : (N,) array-like, optional
        box_rc : (4,) array-like, optional
            ``(r0, c0, r1, c1)`` in the plane's pixels.
        mask_input : (1, m, m) array-like, optional
            Low-res logits in the frame of the window of an earlier
            :class:`TiledPrediction` (only meaningful when the prompt decodes in
            that same window: pass it as ``window``).
        multimask : bool
        window : (r0, c0, r1, c1), optional, keyword-only
            Decode in this window (an earlier :attr:`TiledPrediction.window`)
            when it holds every prompt; else the window is chosen as usual.
            A correction of a shown mask passes the window and logits it was
            decoded with, so the correction sees what the user saw.

        Returns
        -------
        TiledPrediction
        """
        pts = None if points_rc is None else np.asarray(points_rc, np.float64).reshape(-1, 2)
        lab = None if point_labels is None else np.asarray(point_labels).ravel()
        box = None if box_rc is None else np.asarray(box_rc, np.float64).ravel()
        if pts is None and box is None:
            raise ValueError("give points_rc (with point_labels) or box_rc: there is no prompt to decode.")
        if pts is not None and (lab is None or len(lab) != len(pts)):
            raise ValueError("point_labels must give one label per point of points_rc.")
        h, w = self.shape
        for where in ([] if pts is None else list(pts)) + ([] if box is None else [box[:2], box[2:]]):
            if not (-0.5 <= where[0] <= h - 0.5 and -0.5 <= where[1] <= w - 0.5):
                raise ValueError(f"prompt {np.round(where, 1).tolist()} is outside the {h} x {w} plane.")
        if window is not None and inside(window, np.concatenate(
                ([] if pts is None else [pts]) + ([] if box is None else [box.reshape(2, 2)]))):
            win = tuple(int(v) for v in window)
        else:
            win, mask_input = self._first_window(pts, lab, box), None if window is not None else mask_input
        masks, scores, logits = self._decode(win, pts, lab, box, mask_input, multimask)
        best = int(np.argmax(scores))
        if mask_input is None and touches_inner_edge(masks[best], win, self.shape):
            rows, cols = np.nonzero(masks[best])
            ext = (win[0] + rows.min(), win[1] + cols.min(), win[0] + rows.max(), win[1] + cols.max())
            if box is not None:
                ext = (min(ext[0], box[0]), min(ext[1], box[1]), max(ext[2], box[2]), max(ext[3], box[3]))
            if pts is not None:
                ext = (min(ext[0], pts[:, 0].min()), min(ext[1], pts[:, 1].min()),
                       max(ext[2], pts[:, 0].max()), max(ext[3], pts[:, 1].max()))
            again = self._centred_window(ext)
            if again != win:
                win = again
                masks, scores, logits = self._decode(win, pts, lab, box, None, multimask)
        full = np.zeros((len(masks), h, w), dtype=bool)
        full[:, win[0]:win[2], win[1]:win[3]] = masks
        return TiledPrediction(full, scores, logits, win)

