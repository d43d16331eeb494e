"""Automatic segmentation dock widget (thin: every action calls the tier-2 AutomaticSession).

*Run* segments the current slice or every slice in the background (progress,
cancel) into a Labels layer.  Afterwards, moving a quality threshold
re-filters the kept candidates at once, without running the model again.
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
from napari_sam._napari.automatic import DEFAULT_PARAMS, THRESHOLDS, AutomaticSession
from napari_sam._napari.labels import next_free_id
from napari_sam._napari.predictors import make_predictor, model_choices
from napari_sam._qt._workers import Runner
from napari_sam.model.registry import recommended_amg_params

__all__ = ["AutomaticWidget"]


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
        self.tile = SpinBox(label="tile size (0 = untiled)", value=0, min=0, max=16384, step=256)
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
            self.tile, self.halo, self.scope, self.run_button, self.cancel_button, self.progress, self.status,
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
        self.native.destroyed.connect(self._disconnect)
        self.reset_choices()

    def _disconnect(self, *_: Any) -> None:
        """Stop listening to the viewer once the dock widget is gone."""
        self._closed = True
        self.runner.closed = True
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
        tile = int(self.tile.value)
        tile_shape = (tile, tile) if tile else None
        halo = (int(self.halo.value),) * 2 if tile else None
        params = self.params()

        def job(progress: Any = None, cancel: Any = None) -> Any:
            if self._predictor is None or self._predictor_key != key:
                self._predictor = make_predictor(key[0], checkpoint=key[1] or None, device=key[2])
                self._predictor_key = key
            session = AutomaticSession(self._predictor, image, **self._factories)
            refs = session.planes(self.viewer.dims, scope=scope)
            return session, session.run(refs, params=params, tile_shape=tile_shape, halo=halo,
                                        progress=progress, cancel=cancel)

        try:
            AutomaticSession(None, image).planes(self.viewer.dims, scope=scope)  # fail early, on this thread
        except ValueError as exc:
            show_warning(f"napari-sam: {exc}")
            return
        self._set_status("running automatic segmentation ...")
        self.runner.start("run", job, with_progress=True, cancellable=True,
                          on_done=lambda res: self._write(image, scope, *res))

    def _write(self, image: Any, scope: str, session: AutomaticSession, results: dict) -> None:
        self.session = session
        name = f"{image.name} SAM auto"
        if self.output is None or self.output not in self.viewer.layers or self.output.name != name:
            self.output = pl.make_labels_layer(self.viewer, image, name=name)
        if scope == "slice":  # keep the other planes' ids: number above them
            for ref in results:
                self.output.data[ref.selection()] = 0
            self._base = next_free_id(self.output) - 1
        else:
            self._base = 0
        top = AutomaticSession.write(self.output, results, base=self._base)
        self._set_status(f"{top - self._base} object(s) in {len(results)} plane(s)")

    def refilter(self) -> None:
        """Re-apply the thresholds to the last run's candidates (instant, no model)."""
        if self.session is None or self.output is None or self.runner.busy("run"):
            return
        if not self.session.can_refilter:
            self._set_status("tiled run: press Run again to apply the new thresholds")
            return
        try:
            results = self.session.refilter(**self.thresholds())
        except ValueError as exc:
            self._set_status(str(exc))
            return
        top = AutomaticSession.write(self.output, results, base=self._base)
        self._set_status(f"re-filtered: {top - self._base} object(s)")
