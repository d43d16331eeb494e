"""Automatic segmentation dock widget (thin: every action calls the tier-2 AutomaticSession).

*Run* segments the current slice or every slice in the background (progress,
cancel) into a Labels layer.  Afterwards, moving a quality threshold
re-filters the kept candidates at once, without running the model again
(tiled runs too).  Images larger than the model's input are tiled
automatically (tiles of the input size) unless *tiling* says otherwise.
Objects painted by hand into the result layer are never erased: a new result
then goes to a new layer; every replacement is one undo step (Ctrl-Z).
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image
from napari.utils.notifications import show_warning

from napari_sam._napari import prompt_layers as pl
from napari_sam._napari.automatic import (
    DEFAULT_PARAMS,
    THRESHOLDS,
    AutomaticSession,
    auto_tiles,
    edited_planes,
    write_undoable,
)
from napari_sam._napari.labels import next_free_id
from napari_sam._napari.predictors import make_predictor, model_choices, on_model_list_change
from napari_sam._qt._workers import Runner
from napari_sam.model.catalog import recommended_amg_params

__all__ = ["AutomaticWidget", "TILING"]

#: choices of the tiling menu
TILING = ("auto", "untiled", "custom")


class AutomaticWidget(Container):
    """Automatic (grid-prompted) SAM segmentation for ``napari_viewer``."""

    def __init__(self, napari_viewer: Any, *, make_generator: Any = None, to_labels: Any = None) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self._factories = {k: v for k, v in (("make_generator", make_generator), ("to_labels", to_labels)) if v}
        self.session: AutomaticSession | None = None
        self._predictor_key: tuple[str, str, str] | None = None
        self._predictor: Any = None
        self.output: Any = None
        self._base = 0
        self._digests: dict = {}

        self.image_combo = ComboBox(label="image", choices=self._image_choices)
        self.model_combo = ComboBox(label="model", choices=model_choices())
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pth *.pt", value="")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"])
        p = DEFAULT_PARAMS
        self.points_per_side = SpinBox(label="points per side", value=p["points_per_side"], min=1, max=128)
        self.points_per_batch = SpinBox(label="points per batch", value=p["points_per_batch"], min=1, max=1024)
        self.crop_n_layers = SpinBox(label="crop layers", value=p["crop_n_layers"], min=0, max=3)
        self.pred_iou_thresh = FloatSpinBox(label="predicted IoU >", value=p["pred_iou_thresh"],
                                            min=0.0, max=1.0, step=0.01)
        self.stability_score_thresh = FloatSpinBox(label="stability >=", value=p["stability_score_thresh"],
                                                   min=0.0, max=1.0, step=0.01)
        self.box_nms_thresh = FloatSpinBox(label="box NMS IoU", value=p["box_nms_thresh"], min=0.0, max=1.0,
                                           step=0.05)
        self.min_mask_region_area = SpinBox(label="min region area (px)", value=p["min_mask_region_area"],
                                            min=0, max=100_000)
        self.tiling = ComboBox(label="tiling", choices=list(TILING), value="auto")
        self.tiling.tooltip = ("auto: images larger than the model's input are cut into tiles of the input size; "
                               "untiled: one run over the whole image; custom: the tile size and halo below")
        self.tile = SpinBox(label="tile size (custom)", value=1024, min=16, max=16384, step=256)
        self.halo = SpinBox(label="tile halo", value=64, min=0, max=2048, step=16)
        self.scope = RadioButtons(label="slices", choices=["current slice", "all slices"], value="current slice")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="choose an image and press Run")
        self.extend([
            self.image_combo, self.model_combo, self.checkpoint, self.device,
            self.points_per_side, self.points_per_batch, self.crop_n_layers,
            self.pred_iou_thresh, self.stability_score_thresh, self.box_nms_thresh, self.min_mask_region_area,
            self.tiling, self.tile, self.halo, self.scope, self.run_button, self.cancel_button, self.progress, self.status,
        ])
        self.native.setMaximumWidth(430)
        self.runner = Runner(self.progress, self._set_status)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.runner.cancel)
        for name in THRESHOLDS:
            getattr(self, name).changed.connect(self.refilter)
        self.model_combo.changed.connect(self._apply_model_defaults)
        self._apply_model_defaults()
        self._closed = False
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        self._stop_model_updates = on_model_list_change(self._set_model_choices)
        self.native.destroyed.connect(self._disconnect)
        self.reset_choices()

    def _set_model_choices(self, choices: list[str]) -> None:
        self.model_combo.choices = choices

    def _disconnect(self, *_: Any) -> None:
        """Stop listening to the viewer once the dock widget is gone."""
        self._closed = True
        self.runner.closed = True
        self._stop_model_updates()
        self.viewer.layers.events.inserted.disconnect(self.reset_choices)
        self.viewer.layers.events.removed.disconnect(self.reset_choices)

    def _apply_model_defaults(self, *_: Any) -> None:
        """Use the thresholds a model recommends (the built-in model ships its own), else the defaults."""
        recommended = recommended_amg_params(str(self.model_combo.value))
        for name in ("crop_n_layers", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
                     "min_mask_region_area"):
            getattr(self, name).value = recommended.get(name, DEFAULT_PARAMS[name])
        # recommended values without a widget (e.g. the NMS between crops) ride along
        self._hidden_params = {k: v for k, v in recommended.items() if k not in DEFAULT_PARAMS}
        # a model that uses mask NMS (the built-in one) does not use the box NMS threshold
        mask_nms = self._hidden_params.get("mask_nms_thresh")
        self.box_nms_thresh.enabled = mask_nms is None
        self.box_nms_thresh.tooltip = (
            "IoU of bounding boxes above which the lower-rated mask is dropped" if mask_nms is None else
            f"not used: this model's masks are de-duplicated by mask overlap (mask_nms_thresh={mask_nms})"
        )

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(lay.name, lay) for lay in self.viewer.layers if isinstance(lay, Image)]

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status.value = text

    def params(self) -> dict[str, Any]:
        """The AMG parameters currently set in the widget."""
        names = ("points_per_side", "points_per_batch", "crop_n_layers", *THRESHOLDS)
        return {**getattr(self, "_hidden_params", {}), **{n: getattr(self, n).value for n in names}}

    def thresholds(self) -> dict[str, Any]:
        """The cheap-phase parameters currently set in the widget."""
        return {n: getattr(self, n).value for n in THRESHOLDS}

    # ------------------------------------------------------------------ actions
    def run(self) -> None:
        """Segment in the background; the result goes into the "<image> SAM auto" Labels layer."""
        image = self.image_combo.value
        if image is None:
            show_warning("napari-sam: add an image layer first")
            return
        key = (self.model_combo.value, str(self.checkpoint.value or ""), self.device.value)
        scope = "stack" if self.scope.value == "all slices" else "slice"
        tiling, tile = self.tiling.value, int(self.tile.value)
        tile_shape = (tile, tile) if tiling == "custom" else None
        halo = (int(self.halo.value),) * 2 if tiling == "custom" else None
        params = self.params()

        def job(progress: Any = None, cancel: Any = None) -> Any:
            if self._predictor is None or self._predictor_key != key:
                self._predictor = make_predictor(key[0], checkpoint=key[1] or None, device=key[2])
                self._predictor_key = key
            session = AutomaticSession(self._predictor, image, **self._factories)
            refs = session.planes(self.viewer.dims, scope=scope)
            shape, hal = tile_shape, halo
            if tiling == "auto":
                shape, hal = auto_tiles(refs[0].shape, self._predictor)
            return session, session.run(refs, params=params, tile_shape=shape, halo=hal,
                                        progress=progress, cancel=cancel, keep_partial=True), (shape, len(refs))

        try:
            AutomaticSession(None, image).planes(self.viewer.dims, scope=scope)  # fail early, on this thread
        except ValueError as exc:
            show_warning(f"napari-sam: {exc}")
            return
        self._set_status("running automatic segmentation ...")
        self.runner.start("run", job, with_progress=True, cancellable=True,
                          on_done=lambda res: self._write(image, scope, *res))

    def _target(self, image: Any, refs: Any) -> tuple[Any, str]:
        """The layer a result goes to: the last output, or a new layer when it was edited by hand."""
        name = f"{image.name} SAM auto"
        out = self.output
        if out is None or out not in self.viewer.layers or not out.name.startswith(name):
            self._digests = {}
            return pl.make_labels_layer(self.viewer, image, name=name), ""
        edited = edited_planes(out, {r: d for r, d in self._digests.items() if r in refs})
        if edited:
            self._digests = {}
            new = pl.make_labels_layer(self.viewer, image, name=name)
            return new, f"; {out.name!r} was edited by hand, so it is kept and this result is in {new.name!r}"
        return out, ""

    def _remember(self, digests: dict) -> None:
        """Record the planes' states written (a later state outside these is an edit by hand)."""
        for ref, d in digests.items():
            self._digests.setdefault(ref, set()).add(d)

    def _write(self, image: Any, scope: str, session: AutomaticSession, results: dict, info: tuple) -> None:
        self.session = session
        (tile_shape, n_planes) = info
        self.output, note = self._target(image, results)
        # ids above those of the planes not rewritten (all of them for one slice of a stack)
        self._base = next_free_id(self.output) - 1 if scope == "slice" and self.output.ndim > 2 else 0
        try:
            top, digests = write_undoable(self.output, results, base=self._base)
        except ValueError as exc:
            show_warning(f"napari-sam: {exc}")
            return
        self._remember(digests)
        tiles = f", tiles of {tile_shape[0]} px" if tile_shape else ""
        done = f"{top - self._base} object(s) in {len(results)} slice(s){tiles}"
        if session.cancelled:
            done = f"cancelled: kept {len(results)} of {n_planes} slice(s), {top - self._base} object(s)"
        self._set_status(done + note + " (Ctrl-Z on the layer undoes)")

    def refilter(self) -> None:
        """Re-apply the thresholds to the last run's candidates (instant, no model)."""
        if self.session is None or self.output is None or self.runner.busy("run"):
            return
        if not self.session.can_refilter:
            return
        try:
            results = self.session.refilter(**self.thresholds())
        except ValueError as exc:
            if "below" in str(exc):  # the last run kept no candidates that weak
                self._set_status("this threshold is lower than the last run kept candidates for: "
                                 "press Run to apply it")
            else:
                self._set_status(str(exc))
            return
        self.output, note = self._target(self.session.image_layer, results)
        top, digests = write_undoable(self.output, results, base=self._base)
        self._remember(digests)
        self._set_status(f"re-filtered: {top - self._base} object(s){note}")
