"""Interactive SAM prediction: image -> embedding once, then prompts -> masks.

Lifecycle: :meth:`Predictor.set_image` (runs the image encoder once) ->
:meth:`Predictor.predict` / :meth:`Predictor.predict_batch` (cheap, per prompt)
-> :meth:`Predictor.reset_image`.  :meth:`Predictor.get_embedding` and
:meth:`Predictor.set_embedding` let a cache skip the encoder.

Public coordinates are ``(row, col)`` and boxes ``(r0, c0, r1, c1)`` in pixels
of the original image.  This module is the only place (with ``napari_sam.model``)
where SAM's ``(x, y)`` appears: the conversion and the rescaling to the encoder
input happen in :func:`_to_model_xy` and nowhere else.

The preprocessing reproduces the official ``SamPredictor`` exactly: the RGB
``uint8`` image is resized with PIL (bilinear) so that its longest side is
``model.image_size``, normalised with ``pixel_mean``/``pixel_std`` and padded
bottom/right by ``model.preprocess``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from napari_sam.model.registry import resolve_device
from napari_sam.normalize import to_rgb_uint8
from napari_sam.predict._malloc import tune_malloc
from napari_sam.predict.prompts import check_prompts
from napari_sam.predict.upsample import (
    POLYPHASE_MAX_FACTOR,
    UpsamplePlan,
    make_plan,
    threshold_polyphase,
    threshold_upsampled,
)

__all__ = ["BatchPrediction", "Embedding", "Predictor", "preprocess_shape"]


@dataclass(frozen=True)
class Embedding:
    """Image embedding produced by the encoder, enough to predict without it.

    Attributes
    ----------
    features : ndarray, shape (1, C, h, w), float32
        Encoder output (``(1, 256, 64, 64)`` for the official models).
    original_size : (int, int)
        ``(H, W)`` of the image given to ``set_image``.
    input_size : (int, int)
        ``(h, w)`` of the resized image before padding to ``image_size``.
    image_size : int
        Encoder input side of the model (1024 for the official models).
    model_id : str
        Identity of the model architecture (see :func:`model_identity`).
    """

    features: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: int
    model_id: str

    def save(self, path: str | Path) -> None:
        """Write the embedding to an ``.npz`` file at ``path``."""
        np.savez(
            path,
            features=self.features,
            original_size=np.asarray(self.original_size),
            input_size=np.asarray(self.input_size),
            image_size=np.asarray(self.image_size),
            model_id=np.asarray(self.model_id),
        )

    @classmethod
    def load(cls, path: str | Path) -> Embedding:
        """Read an embedding written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            return cls(
                features=np.asarray(data["features"], dtype=np.float32),
                original_size=tuple(int(v) for v in data["original_size"]),
                input_size=tuple(int(v) for v in data["input_size"]),
                image_size=int(data["image_size"]),
                model_id=str(data["model_id"]),
            )


@dataclass(frozen=True)
class BatchPrediction:
    """Result of :meth:`Predictor.predict_batch` (torch tensors on the predictor's device).

    Attributes
    ----------
    low_res_logits : Tensor, shape (B, C, m, m), float32
        Decoder logits (``m = 256`` for the official models); C is 3 with
        ``multimask=True``, else 1.
    scores : Tensor, shape (B, C), float32
        Predicted IoU of each mask.
    mask_logits : Tensor, shape (B, C, H, W), float32, or None
        Logits upsampled to the original image size (``> mask_threshold`` is
        the mask); None when ``upsample=False``.
    prompt_index : Tensor, shape (K,), int64, or None
        With ``predict_batch(..., min_score=...)``: the prompts whose masks
        ``low_res_logits`` and ``mask_logits`` hold (their first axis is K);
        None: every prompt.
    """

    low_res_logits: torch.Tensor
    scores: torch.Tensor
    mask_logits: torch.Tensor | None
    prompt_index: torch.Tensor | None = None


def preprocess_shape(original_size: Sequence[int], long_side: int) -> tuple[int, int]:
    """Size ``(h, w)`` of an image resized so that its longest side is ``long_side``.

    Same rounding as the official ``ResizeLongestSide.get_preprocess_shape``.
    """
    old_h, old_w = (int(v) for v in original_size)
    scale = long_side * 1.0 / max(old_h, old_w)
    return int(old_h * scale + 0.5), int(old_w * scale + 0.5)


def model_identity(model: torch.nn.Module) -> str:
    """A string identifying the architecture of ``model`` (not its weights)."""
    config = getattr(model, "config", None)
    if isinstance(config, dict) and config:
        digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        kind = (config.get("image_encoder") or {}).get("type", "sam")
        return f"{kind}-{config.get('image_size', '')}-{digest[:12]}"
    return f"{type(model).__name__}-{getattr(model, 'image_size', '')}"


class Predictor:
    """SAM predictor with a ``(row, col)`` API.

    Parameters
    ----------
    model : Sam
        A model with ``image_encoder``, ``prompt_encoder``, ``mask_decoder``,
        ``preprocess``, ``image_size`` and ``mask_threshold``.  It is moved to
        ``device`` and put in eval mode.
    device : str or torch.device, optional
        Default: :func:`napari_sam.model.registry.resolve_device` (CUDA, MPS, CPU).
    """

    def __init__(self, model: torch.nn.Module, *, device: Any = None) -> None:
        for part in ("image_encoder", "prompt_encoder", "mask_decoder", "preprocess"):
            if not hasattr(model, part):
                raise TypeError(f"model has no {part!r}: pass a Sam model (napari_sam.build_model).")
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            tune_malloc()  # opt-in (NAPARI_SAM_TUNE_MALLOC=1): reuse the decoder's large temporaries
        self.model = model.to(self.device).eval()
        encoder_size = getattr(model.image_encoder, "img_size", None)
        self.image_size = int(getattr(model, "image_size", None) or encoder_size)
        prompt_encoder = model.prompt_encoder
        self.embedding_channels = int(prompt_encoder.embed_dim)
        self.embedding_size = tuple(int(v) for v in prompt_encoder.image_embedding_size)
        self.mask_input_size = tuple(int(v) for v in prompt_encoder.mask_input_size)
        self.mask_threshold = float(getattr(model, "mask_threshold", 0.0))
        self.model_id = model_identity(model)
        self.reset_image()

    # ------------------------------------------------------------------ image
    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self._features: torch.Tensor | None = None
        self._decoder_cache: Any = None  # (features, image_pe, no-mask DecoderImageCache)
        self._upsample_plan: Any = None  # (key, UpsamplePlan or None) for masks_from_logits
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    @property
    def is_image_set(self) -> bool:
        """Whether an image (or an embedding) is set."""
        return self._features is not None

    @property
    def features(self) -> torch.Tensor:
        """Image embedding, Tensor of shape (1, C, h, w) float32 on ``device``."""
        return self._require_image()

    def _require_image(self) -> torch.Tensor:
        if self._features is None:
            raise ValueError("no image is set: call set_image(image) (or set_embedding) first.")
        return self._features

    @torch.inference_mode()
    def set_image(
        self,
        image: Any,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: Any = None,
    ) -> None:
        """Compute the embedding of ``image`` (runs the image encoder once).

        Parameters
        ----------
        image : array-like, shape (H, W), (H, W, C) or with ``channel_axis``
            Any real dtype; converted by :func:`napari_sam.normalize.to_rgb_uint8`
            (``(H, W, 3) uint8`` RGB is used unchanged).  Never modified.
        channel_axis, channels, contrast_limits
            Passed to :func:`~napari_sam.normalize.to_rgb_uint8`.  Pass limits
            estimated once on the whole image for tiles or slices.

        Raises
        ------
        ValueError
            Wrong number of dimensions, empty image, non-numeric dtype,
            NaN/inf values, inconsistent ``channel_axis``/``channels``.
        """
        rgb = to_rgb_uint8(
            image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits
        )
        original_size = (int(rgb.shape[0]), int(rgb.shape[1]))
        new_h, new_w = preprocess_shape(original_size, self.image_size)
        if min(new_h, new_w) < 1:
            raise ValueError(
                f"an image of {original_size[0]} x {original_size[1]} pixels is too elongated for SAM: resized "
                f"to a long side of {self.image_size} px its short side would be 0 px; crop it, or segment it "
                "in tiles (tile_shape=)"
            )
        resized = np.array(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        x = self.model.preprocess(x.float())
        features = self.model.image_encoder(x)
        self.reset_image()
        self._features = features
        self.original_size = original_size
        self.input_size = (new_h, new_w)
        self._image_cache()

    def get_embedding(self) -> Embedding:
        """Return the current embedding (features copied to a numpy float32 array)."""
        features = self._require_image()
        return Embedding(
            features=features.detach().to("cpu", torch.float32).numpy().copy(),
            original_size=self.original_size,
            input_size=self.input_size,
            image_size=self.image_size,
            model_id=self.model_id,
        )

    def set_embedding(self, embedding: Embedding) -> None:
        """Use a stored embedding instead of running the encoder.

        Raises
        ------
        TypeError
            ``embedding`` is not an :class:`Embedding`.
        ValueError
            It was made by a model with another architecture or input size, or
            its fields are inconsistent.
        """
        if not isinstance(embedding, Embedding):
            raise TypeError(f"expected an Embedding (from get_embedding), got {type(embedding).__name__}.")
        if embedding.image_size != self.image_size:
            raise ValueError(
                f"the embedding was computed for image_size {embedding.image_size} but this model "
                f"uses {self.image_size}; recompute it with set_image."
            )
        if embedding.model_id and embedding.model_id != self.model_id:
            raise ValueError(
                f"the embedding comes from model {embedding.model_id!r} but this predictor uses "
                f"{self.model_id!r}; recompute it with set_image."
            )
        expected = (1, self.embedding_channels, *self.embedding_size)
        features = np.asarray(embedding.features)
        if features.shape != expected:
            raise ValueError(
                f"embedding features have shape {features.shape} but this model needs {expected}; "
                "recompute it with set_image."
            )
        original = tuple(int(v) for v in embedding.original_size)
        if len(original) != 2 or min(original) < 1:
            raise ValueError(f"embedding original_size must be (H, W) > 0, got {embedding.original_size}.")
        if tuple(int(v) for v in embedding.input_size) != preprocess_shape(original, self.image_size):
            raise ValueError(
                f"embedding input_size {embedding.input_size} does not match original_size "
                f"{original} resized to {self.image_size}; the embedding is corrupt."
            )
        self.reset_image()
        self._features = torch.as_tensor(features, dtype=torch.float32, device=self.device).clone()
        self.original_size = original
        self.input_size = preprocess_shape(original, self.image_size)
        self._image_cache()

    def _image_cache(self) -> tuple[torch.Tensor, Any]:
        """Dense positional encoding and the decoder's no-mask image state, once per image.

        Computed at ``set_image``/``set_embedding`` and dropped by
        ``reset_image``; rebuilt if ``_features`` was replaced otherwise.
        """
        features = self._require_image()
        cache = self._decoder_cache
        if cache is None or cache[0] is not features:
            with torch.inference_mode():
                encoder = self.model.prompt_encoder
                image_pe = encoder.get_dense_pe()
                _, no_mask = encoder(points=None, boxes=None, masks=None)
                prepared = self.model.mask_decoder.prepare_image(features, image_pe, no_mask)
            cache = self._decoder_cache = (features, image_pe, prepared)
        return cache[1], cache[2]

    # ---------------------------------------------------------------- prompts
    def _to_model_xy(self, coords_rc: np.ndarray) -> np.ndarray:
        """``(..., 2)`` (row, col) in original pixels -> (x, y) in encoder-input pixels, float64."""
        (old_h, old_w), (new_h, new_w) = self.original_size, self.input_size
        xy = np.asarray(coords_rc, dtype=np.float64)[..., ::-1].copy()
        xy[..., 0] *= new_w / old_w
        xy[..., 1] *= new_h / old_h
        return xy

    def _decode(
        self,
        points_rc: np.ndarray | None,
        point_labels: np.ndarray | None,
        boxes_rc: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
        min_score: float | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Run prompt encoder + mask decoder on validated batched prompts (no Python loop).

        With ``min_score`` (no mask input), also the indices of the prompts
        whose masks are returned (see ``predict_batch``).
        """
        dev = self.device
        points = None
        if points_rc is not None:
            coords = torch.as_tensor(self._to_model_xy(points_rc), dtype=torch.float, device=dev)
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=dev)
            points = (coords, labels)
        boxes = None
        if boxes_rc is not None:
            xyxy = self._to_model_xy(boxes_rc.reshape(-1, 2, 2)).reshape(-1, 4)
            boxes = torch.as_tensor(xyxy, dtype=torch.float, device=dev)
        masks = None
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float, device=dev)
        image_pe, no_mask_cache = self._image_cache()
        decoder = self.model.mask_decoder
        if masks is None:  # dense prompt = "no mask": the image part is cached
            sparse = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)[0]
            return decoder(None, None, sparse, None, bool(multimask), image_cache=no_mask_cache, min_iou=min_score)
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low_res, scores = decoder(
            image_embeddings=self._require_image(),
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=bool(multimask),
        )
        if min_score is not None:
            keep = torch.nonzero((scores > min_score).any(dim=1)).view(-1)
            return low_res[keep], scores, keep
        return low_res, scores

    @torch.inference_mode()
    def predict(
        self,
        points_rc: Any = None,
        point_labels: Any = None,
        box_rc: Any = None,
        mask_input: Any = None,
        *,
        multimask: bool = True,
        threshold: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt (points and/or a box and/or a previous mask).

        Parameters
        ----------
        points_rc : array-like, shape (N, 2), optional
            ``(row, col)`` pixel coordinates in the original image.
        point_labels : array-like, shape (N,), optional
            1 = foreground, 0 = background; required with ``points_rc``.
        box_rc : array-like, shape (4,), optional
            ``(r0, c0, r1, c1)`` with ``r0 <= r1`` and ``c0 <= c1``.
        mask_input : array-like, shape (1, m, m) or (m, m), optional
            Low-res logits of an earlier prediction (``m = 256`` for official models).
        multimask : bool
            Three masks (best for a single ambiguous click) or one.
        threshold : float, optional
            Logit threshold of the masks; None: ``mask_threshold``.

        Returns
        -------
        masks : ndarray, shape (C, H, W), bool
        scores : ndarray, shape (C,), float32
            Predicted IoU of each mask.
        logits : ndarray, shape (C, m, m), float32
            Low-res logits (feed one back as ``mask_input``).

        Raises
        ------
        ValueError
            No image set, no prompt, points outside the image, counts or
            labels wrong, ``r1 < r0``/``c1 < c0``, wrong ``mask_input`` shape.
        """
        self._require_image()
        mask = None
        if mask_input is not None:
            mask = np.asarray(mask_input)
            mask = mask[None] if mask.ndim == 2 else mask
        prompts = check_prompts(
            None if points_rc is None else np.asarray(points_rc)[None],
            None if point_labels is None else np.asarray(point_labels)[None],
            None if box_rc is None else np.asarray(box_rc)[None],
            None if mask is None else mask[None],
            image_shape=self.original_size,
            mask_input_size=self.mask_input_size,
            allow_padding=False,
            single=True,
        )
        low_res, scores = self._decode(*prompts, multimask)
        masks = self.masks_from_logits(low_res[0], threshold=threshold)
        return (
            masks.cpu().numpy(),
            scores[0].to("cpu", torch.float32).numpy(),
            low_res[0].to("cpu", torch.float32).numpy(),
        )

    @torch.inference_mode()
    def predict_batch(
        self,
        points_rc: Any = None,
        point_labels: Any = None,
        boxes_rc: Any = None,
        mask_input: Any = None,
        *,
        multimask: bool = True,
        upsample: bool = True,
        min_score: float | None = None,
    ) -> BatchPrediction:
        """Decode B prompts against the current embedding in one vectorised call.

        Parameters
        ----------
        points_rc : array-like or Tensor, shape (B, N, 2), optional
            ``(row, col)`` points; prompt ``b`` uses ``points_rc[b]``.
        point_labels : array-like or Tensor, shape (B, N), optional
            1 foreground, 0 background, -1 padding (ignored point, lets prompts
            with fewer points share the array).
        boxes_rc : array-like or Tensor, shape (B, 4), optional
            ``(r0, c0, r1, c1)`` per prompt.
        mask_input : array-like or Tensor, shape (B, 1, m, m), optional
            Low-res logits per prompt.
        multimask : bool
            C = 3 masks per prompt, or C = 1.
        upsample : bool
            Also return logits at the original size (memory: B * C * H * W floats).
        min_score : float, optional
            Return masks only for the prompts with at least one score
            ``> min_score`` (``prompt_index`` says which; ``scores`` covers
            every prompt).  The decoder then skips the mask upscaling of the
            others; the masks returned are the same.

        Returns
        -------
        BatchPrediction
        """
        self._require_image()
        prompts = check_prompts(
            points_rc,
            point_labels,
            boxes_rc,
            mask_input,
            image_shape=self.original_size,
            mask_input_size=self.mask_input_size,
            allow_padding=True,
            single=False,
        )
        low_res, scores, *kept = self._decode(*prompts, multimask, None if min_score is None else float(min_score))
        mask_logits = None
        if upsample:
            b, c = low_res.shape[:2]
            mask_logits = self.upsample_logits(low_res.flatten(0, 1)).unflatten(0, (b, c))
        return BatchPrediction(low_res_logits=low_res, scores=scores, mask_logits=mask_logits,
                               prompt_index=kept[0] if kept else None)

    @torch.inference_mode()
    def masks_from_logits(self, low_res_logits: Any, *, threshold: float | None = None) -> torch.Tensor:
        """``upsample_logits(low_res_logits) > threshold``, without the full-size logits.

        Where the output is a plain upsampling of at most 4x per axis (the
        image's long side is the encoder size, e.g. 1024 x 1024 or 768 x 1024
        for the official models) every pixel is computed by phases
        (:func:`~napari_sam.predict.upsample.threshold_polyphase`); otherwise most
        pixels are decided at low resolution
        (:func:`~napari_sam.predict.upsample.threshold_upsampled`), with a dense
        fallback for noise-like logits.  Equal to the dense result except,
        at most, for pixels whose upsampled logit is within float rounding of
        the threshold.

        Parameters
        ----------
        low_res_logits : Tensor or array-like, shape (K, m, m)
        threshold : float, optional
            Logit threshold; None: ``mask_threshold``.

        Returns
        -------
        Tensor, shape (K, H, W), bool, on ``device``
        """
        self._require_image()
        threshold = self.mask_threshold if threshold is None else float(threshold)
        logits = torch.as_tensor(low_res_logits, dtype=torch.float32, device=self.device)
        if logits.ndim != 3 or logits.shape[1] != logits.shape[2]:
            raise ValueError(f"low_res_logits must have shape (K, m, m), got {tuple(logits.shape)}.")
        plan = self._upsample_plan_for(logits.shape[-1])
        if plan is not None and 0 < plan.factor <= POLYPHASE_MAX_FACTOR:  # e.g. the long side is 1024
            return threshold_polyphase(logits, plan, threshold)
        masks = None if plan is None else threshold_upsampled(logits, plan, threshold)
        if masks is None and plan is not None and plan.polyphase:  # noise-like logits, large factor
            masks = threshold_polyphase(logits, plan, threshold)
        if masks is None:  # no plan, or noise-like logits: the dense path is faster
            masks = self.upsample_logits(logits) > threshold
        return masks

    def _upsample_plan_for(self, low_res: int) -> UpsamplePlan | None:
        """The (cached) :func:`~napari_sam.predict.upsample.make_plan` of the current image."""
        key = (low_res, self.image_size, self.input_size, self.original_size)
        if self._upsample_plan is None or self._upsample_plan[0] != key:
            plan = make_plan(*key)
            self._upsample_plan = (key, None if plan is None else plan.to(self.device))
        return self._upsample_plan[1]

    @torch.inference_mode()
    def upsample_logits(self, low_res_logits: Any) -> torch.Tensor:
        """Upsample low-res logits to the original image size (official postprocessing).

        Parameters
        ----------
        low_res_logits : Tensor or array-like, shape (K, m, m)

        Returns
        -------
        Tensor, shape (K, H, W), float32, on ``device``
            Logits; ``> mask_threshold`` gives the masks.
        """
        self._require_image()
        logits = torch.as_tensor(low_res_logits, dtype=torch.float32, device=self.device)
        if logits.ndim != 3:
            raise ValueError(f"low_res_logits must have shape (K, m, m), got {tuple(logits.shape)}.")
        if logits.shape[0] == 0:
            return logits.new_zeros((0, *self.original_size))
        size = self.image_size
        up = F.interpolate(logits[:, None], (size, size), mode="bilinear", align_corners=False)
        up = up[..., : self.input_size[0], : self.input_size[1]]
        if tuple(up.shape[-2:]) != tuple(self.original_size):
            up = F.interpolate(up, self.original_size, mode="bilinear", align_corners=False)
        # else: bilinear resize to the same size is the identity (source pixel
        # (i + 0.5) * 1 - 0.5 = i, weight exactly 1), so it is skipped
        return up[:, 0]
