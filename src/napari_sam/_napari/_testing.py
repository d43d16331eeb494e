"""Deterministic stand-in predictors with the :class:`napari_sam.predict.predictor.Predictor` interface.

Test helpers (never offered in the widgets' model list): they need no weights
and give exactly predictable masks, so tests of the napari glue can compare
with a known answer:

- :class:`DiskPredictor` answers a point with a disk around it, a box with the
  ellipse inscribed in it; negative points cut disks out.
- :class:`ThresholdPredictor` answers with the connected bright component
  (``image > Otsu threshold``) under the prompt, like a perfect model on
  clean fluorescence data; the prompt is the first positive point, else the
  box centre, else the maximum of ``mask_input``.

Both count encoder calls in ``n_encoded`` so tests can prove caching.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["ComponentGenerator", "DiskPredictor", "ThresholdPredictor", "mask_to_low_res"]

LOW_RES = 256


def mask_to_low_res(mask: np.ndarray, *, value: float = 10.0) -> np.ndarray:
    """``(H, W)`` bool -> ``(256, 256)`` float32 logits in SAM's padded low-res frame."""
    h, w = mask.shape
    scale = LOW_RES / max(h, w)
    out = np.full((LOW_RES, LOW_RES), -value, dtype=np.float32)
    hh, ww = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    rows = np.minimum((np.arange(hh) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(ww) / scale).astype(int), w - 1)
    out[:hh, :ww] = np.where(mask[np.ix_(rows, cols)], value, -value)
    return out


def _low_res_to_mask(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    scale = LOW_RES / max(h, w)
    rows = np.minimum((np.arange(h) * scale).astype(int), LOW_RES - 1)
    cols = np.minimum((np.arange(w) * scale).astype(int), LOW_RES - 1)
    return logits[np.ix_(rows, cols)] > 0


class _StandIn:
    """Common state: image lifecycle, embeddings, batch prediction."""

    mask_threshold = 0.0

    def __init__(self) -> None:
        self.image: np.ndarray | None = None
        self.n_encoded = 0

    # lifecycle -------------------------------------------------------------
    def set_image(self, image: np.ndarray, *, channel_axis: int | None = None,
                  contrast_limits: Any = None) -> None:
        image = np.asarray(image)
        if image.ndim == 3:
            image = image.mean(axis=-1 if channel_axis in (None, -1, 2) else channel_axis)
        if image.ndim != 2:
            raise ValueError(f"expected a 2D image, got shape {image.shape}")
        self.image = image.astype(np.float64, copy=True)
        self.n_encoded += 1

    @property
    def is_image_set(self) -> bool:
        return self.image is not None

    @property
    def original_size(self) -> tuple[int, int]:
        if self.image is None:
            raise RuntimeError("call set_image first")
        return tuple(self.image.shape)  # type: ignore[return-value]

    def reset_image(self) -> None:
        self.image = None

    def get_embedding(self) -> dict[str, np.ndarray]:
        if self.image is None:
            raise RuntimeError("call set_image first")
        return {"image": self.image.copy()}

    def set_embedding(self, embedding: dict[str, np.ndarray]) -> None:
        self.image = np.asarray(embedding["image"]).copy()

    # prediction ------------------------------------------------------------
    def _candidates(self, points_rc, point_labels, box_rc, mask_input) -> list[np.ndarray]:
        raise NotImplementedError

    def predict(self, points_rc=None, point_labels=None, box_rc=None, mask_input=None, *,
                multimask: bool = True):
        if self.image is None:
            raise RuntimeError("call set_image first")
        cands = self._candidates(points_rc, point_labels, box_rc, mask_input)
        logits = getattr(self, "_memo_logits", None)
        self._memo_logits = None
        if logits is None:
            logits = np.stack([mask_to_low_res(m) for m in cands])
        masks = np.stack(cands).astype(bool)
        if not multimask:
            masks, logits = masks[1:2], logits[1:2]
        scores = np.array([0.6, 0.9, 0.75] if multimask else [0.9], dtype=np.float32)
        return masks, scores, logits.copy()

    def predict_batch(self, points_rc=None, point_labels=None, boxes_rc=None, mask_input=None, *,
                      multimask: bool = True, upsample: bool = True):
        import torch

        n = len(boxes_rc) if boxes_rc is not None else len(points_rc)
        masks, scores, logits = [], [], []
        for b in range(n):
            m, s, lg = self.predict(
                None if points_rc is None else points_rc[b],
                None if point_labels is None else point_labels[b],
                None if boxes_rc is None else boxes_rc[b],
                None if mask_input is None else np.asarray(mask_input[b]),
                multimask=multimask,
            )
            masks.append(np.where(m, 10.0, -10.0))
            scores.append(s)
            logits.append(lg)
        return SimpleNamespace(
            low_res_logits=torch.as_tensor(np.stack(logits)).float(),
            scores=torch.as_tensor(np.stack(scores)),
            mask_logits=torch.as_tensor(np.stack(masks)).float() if upsample else None,
        )

    def upsample_logits(self, low_res_logits: Any) -> Any:
        """``(K, 256, 256)`` low-res logits -> ``(K, H, W)`` logits at the image size (torch)."""
        import torch

        low = np.asarray(low_res_logits.detach().cpu() if hasattr(low_res_logits, "detach") else low_res_logits)
        return torch.as_tensor(_upsample(low, self.original_size)).float()


def foreground(image: np.ndarray) -> np.ndarray:
    """Bright pixels: above Otsu's threshold (nothing for a constant image)."""
    if image.max() == image.min():
        return np.zeros(image.shape, dtype=bool)
    from skimage.filters import threshold_otsu

    return image > threshold_otsu(image)


def _upsample(low: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour map of ``(..., 256, 256)`` padded low-res logits to ``(..., H, W)``."""
    h, w = shape
    scale = LOW_RES / max(h, w)
    rows = np.minimum((np.arange(h) * scale).astype(int), LOW_RES - 1)
    cols = np.minimum((np.arange(w) * scale).astype(int), LOW_RES - 1)
    return low[..., rows[:, None], cols[None, :]]


def _disk(shape: tuple[int, int], centre: np.ndarray, radius: float) -> np.ndarray:
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


class DiskPredictor(_StandIn):
    """Disk of ``radius`` around each positive point, minus disks around negative points.

    A box gives the ellipse inscribed in it.  The three multimask candidates
    use radii ``radius / 2``, ``radius`` and ``2 * radius`` (the middle one has
    the best score).
    """

    def __init__(self, radius: float = 6.0) -> None:
        super().__init__()
        self.radius = float(radius)

    def _candidates(self, points_rc, point_labels, box_rc, mask_input):
        shape = self.image.shape
        out = []
        for factor in (0.5, 1.0, 2.0):
            r = self.radius * factor
            m = np.zeros(shape, dtype=bool)
            if box_rc is not None:
                r0, c0, r1, c1 = np.asarray(box_rc, dtype=float)
                rr, cc = np.ogrid[: shape[0], : shape[1]]
                cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
                ry, rx = max((r1 - r0) / 2, 0.5), max((c1 - c0) / 2, 0.5)
                m |= ((rr - cy) / ry) ** 2 + ((cc - cx) / rx) ** 2 <= 1
            pts = np.zeros((0, 2)) if points_rc is None else np.asarray(points_rc, float).reshape(-1, 2)
            lab = np.ones(len(pts)) if point_labels is None else np.asarray(point_labels).ravel()
            for p, lbl in zip(pts, lab):
                if lbl > 0 and box_rc is None:
                    m |= _disk(shape, p, r)
            for p, lbl in zip(pts, lab):
                if lbl <= 0:
                    m &= ~_disk(shape, p, r)
            out.append(m)
        return out


class ThresholdPredictor(_StandIn):
    """The bright connected component under the prompt (empty when the prompt is dark)."""

    def _candidates(self, points_rc, point_labels, box_rc, mask_input):
        from scipy import ndimage as ndi

        img = self.image
        if getattr(self, "_labelled", (None,))[0] is not img:
            self._labelled = (img, ndi.label(foreground(img))[0], {})
        _, labels, memo = self._labelled
        seed = None
        pts = np.zeros((0, 2)) if points_rc is None else np.asarray(points_rc, float).reshape(-1, 2)
        lab = np.ones(len(pts)) if point_labels is None else np.asarray(point_labels).ravel()
        positives = pts[lab > 0]
        if len(positives):
            seed = positives[0]
        elif box_rc is not None:
            r0, c0, r1, c1 = np.asarray(box_rc, dtype=float)
            seed = np.array([(r0 + r1) / 2, (c0 + c1) / 2])
        elif mask_input is not None:
            prev = _low_res_to_mask(np.asarray(mask_input).reshape(LOW_RES, LOW_RES), img.shape)
            seed = np.array(ndi.center_of_mass(prev)) if prev.any() else None
        k = 0
        if seed is not None:
            r = int(np.clip(np.round(seed[0]), 0, img.shape[0] - 1))
            c = int(np.clip(np.round(seed[1]), 0, img.shape[1] - 1))
            k = int(labels[r, c])
        if k not in memo:
            comp = labels == k if k else np.zeros(img.shape, dtype=bool)
            cands = [ndi.binary_erosion(comp), comp, ndi.binary_dilation(comp)]
            memo[k] = (cands, np.stack([mask_to_low_res(m) for m in cands]))
        self._memo_logits = memo[k][1]
        return [m.copy() for m in memo[k][0]]


class ComponentGenerator:
    """Stand-in for ``AutomaticMaskGenerator``: one candidate per bright connected component.

    A component's "predicted IoU" is ``min(area / 1000, 0.99)``, so thresholds
    select objects by size in a way tests can predict.  ``n_expensive``
    counts the expensive runs.
    """

    def __init__(self, predictor: Any = None, **params: Any) -> None:
        self.predictor = predictor
        self.params = params
        self.n_expensive = 0

    def run_expensive(self, image: np.ndarray, *, channel_axis: int | None = None,
                      contrast_limits: Any = None, progress: Any = None, cancel: Any = None) -> list[dict]:
        from scipy import ndimage as ndi

        from napari_sam.progress import check_cancelled

        check_cancelled(cancel)
        self.n_expensive += 1
        img = np.asarray(image, dtype=np.float64)
        if img.ndim == 3:
            img = img.mean(axis=-1)
        labels, n = ndi.label(foreground(img))
        out = []
        for k in range(1, n + 1):
            mask = labels == k
            area = int(mask.sum())
            out.append({"mask": mask, "area": area, "score": min(area / 1000, 0.99)})
        return out

    def filter(self, raw: list[dict], *, pred_iou_thresh: float = 0.0, stability_score_thresh: float = 0.0,
               box_nms_thresh: float = 0.7, min_mask_region_area: int = 0) -> list[dict]:
        return [r for r in raw if r["score"] > pred_iou_thresh and r["area"] >= min_mask_region_area]

    @staticmethod
    def to_labels(records: list[dict], shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=np.uint32)
        for k, r in enumerate(records, start=1):
            out[r["mask"]] = k
        return out
