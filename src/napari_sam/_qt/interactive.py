"""Interactive segmentation dock widget (thin: every action calls the tier-2 Session).

Workflow: choose the image, the model and the device, press *Start*; the
embedding of the shown slice is computed in the background (images much
larger than the model's input are embedded tile by tile around each prompt
instead).  Click points (``T`` on the points layer toggles positive/negative,
Alt+click adds a negative point) or draw boxes/polygons in the "SAM boxes"
layer; a preview follows each change.  ``N`` shows the next of the three
ambiguity masks, ``C`` commits into the target Labels layer, ``U`` (or the
button) undoes the last commit whichever layer is active.  The keys are bound
on the plugin's layers only (``U`` on the viewer) and shadow none of napari's.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QApplication

from napari_sam._napari import prompt_layers as pl
from napari_sam._napari.predictors import (
    make_predictor,
    model_choices,
    model_identity,
    on_model_list_change,
    open_session,
)
from napari_sam._napari.session import Session, model_card_of, quality_hint
from napari_sam._qt._workers import Runner

__all__ = ["InteractiveWidget", "SHORTCUTS"]

#: (key, action) pairs bound on the SAM prompt layers and the target labels layer.
SHORTCUTS = (
    ("T", "next points positive / negative (SAM points)"),
    ("Alt+click", "add a negative point"),
    ("N", "next of the 3 ambiguity masks"),
    ("C", "commit the preview"),
    ("U", "undo the last commit (any layer active)"),
    ("Shift+X", "clear all prompts"),
    ("R / E / P", "box / ellipse / polygon (SAM boxes)"),
)
#: choices of the "large images" menu -> Session(tiled=...)
LARGE_IMAGES = {"auto": None, "tiles around prompts": True, "whole image": False}


class InteractiveWidget(Container):
    """Point-and-box SAM segmentation for the napari viewer ``napari_viewer``."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.session: Session | None = None
        self.points_layer: Any = None
        self.shapes_layer: Any = None
        self.preview_layer: Any = None

        self.image_combo = ComboBox(label="image", choices=self._image_choices)
        self.model_combo = ComboBox(label="model", choices=model_choices())
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pth *.pt", value="")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"])
        self.start_button = PushButton(text="Start session")
        self.labels_combo = ComboBox(label="target labels", choices=self._labels_choices, nullable=True)
        self.new_labels_button = PushButton(text="New labels layer")
        self.overwrite = CheckBox(text="overwrite existing labels", value=False)
        self.large = ComboBox(label="large images", choices=list(LARGE_IMAGES), value="auto")
        self.large.tooltip = ("auto: an image more than twice the model's input size is embedded in tiles "
                              "of the input size around each prompt, at full resolution")
        self.commit_button = PushButton(text="Commit [C]")
        self.undo_button = PushButton(text="Undo last commit [U]")
        self.cycle_button = PushButton(text="Next ambiguity mask [N]")
        self.toggle_button = PushButton(text="Next points: positive [T]")
        self.clear_button = PushButton(text="Clear prompts [Shift+X]")
        self.cache_dir = FileEdit(label="embedding cache", mode="d", value="")
        self.precompute_button = PushButton(text="Precompute embeddings")
        self.precompute_button.tooltip = ("embed every slice of the stack, or every tile of a large image, "
                                          "so that later prompts answer at once")
        self.iou = FloatSpinBox(label="propagation IoU", value=0.3, min=0.0, max=1.0, step=0.05)
        self.propagate_button = PushButton(text="Propagate last object through z")
        self.cancel_button = PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="choose an image and press Start")
        self.status.native.setWordWrap(True)
        keys = "\n".join(f"{k}: {a}" for k, a in SHORTCUTS)
        self.shortcuts = Label(label="shortcuts", value=keys)
        self.extend([
            self.image_combo, self.model_combo, self.checkpoint, self.device, self.large, self.start_button,
            self.labels_combo, self.new_labels_button, self.overwrite,
            self.toggle_button, self.cycle_button, self.commit_button, self.undo_button, self.clear_button,
            self.cache_dir, self.precompute_button, self.iou, self.propagate_button,
            self.cancel_button, self.progress, self.status, self.shortcuts,
        ])
        self.native.setMaximumWidth(430)
        self.runner = Runner(self.progress, self._set_status)
        self._last_id: int | None = None
        self._commits: list[Any] = []  # labels layers committed into, newest last
        self._debounce = QTimer()
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(120)
        self._debounce.timeout.connect(self.request_preview)
        self._slice_timer = QTimer()
        self._slice_timer.setSingleShot(True)
        self._slice_timer.setInterval(200)
        self._slice_timer.timeout.connect(self._on_slice_changed)

        self.start_button.changed.connect(self.start_session)
        self.new_labels_button.changed.connect(self.new_labels_layer)
        self.commit_button.changed.connect(self.commit)
        self.undo_button.changed.connect(self.undo_last_commit)
        self.viewer.bind_key("U", lambda _viewer: self.undo_last_commit(), overwrite=True)
        self.cycle_button.changed.connect(self.cycle)
        self.toggle_button.changed.connect(self.toggle)
        self.clear_button.changed.connect(self.clear)
        self.precompute_button.changed.connect(self.precompute)
        self.propagate_button.changed.connect(self.propagate)
        self.cancel_button.changed.connect(self.runner.cancel)
        self._closed = False
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self._stop_model_updates = on_model_list_change(self._set_model_choices)
        self.native.destroyed.connect(self._disconnect)
        self.reset_choices()

    def _set_model_choices(self, choices: list[str]) -> None:
        self.model_combo.choices = choices

    def _on_step(self, _event: Any = None) -> None:
        if not self._closed:
            self._slice_timer.start()

    def _disconnect(self, *_: Any) -> None:
        """Stop listening to the viewer once the dock widget is gone."""
        self._closed = True
        self.runner.closed = True
        self._stop_model_updates()
        for timer in (self._debounce, self._slice_timer):
            try:
                timer.stop()
            except RuntimeError:  # Qt already deleted it
                pass
        try:
            self.viewer.bind_key("U", None)
        except (KeyError, ValueError, TypeError):
            pass
        for emitter, cb in ((self.viewer.layers.events.inserted, self.reset_choices),
                            (self.viewer.layers.events.removed, self.reset_choices),
                            (self.viewer.dims.events.current_step, self._on_step)):
            emitter.disconnect(cb)

    # ------------------------------------------------------------------ helpers
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(lay.name, lay) for lay in self.viewer.layers if isinstance(lay, Image)]

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(lay.name, lay) for lay in self.viewer.layers
                if isinstance(lay, Labels) and lay is not self.preview_layer]

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status.value = text

    # ------------------------------------------------------------------ session
    def start_session(self) -> None:
        """Load the model, open the cache and scan the target labels in the background, then add the prompt layers."""
        image = self.image_combo.value
        if image is None:
            show_warning("napari-sam: add an image layer first")
            return
        name, ckpt, device = self.model_combo.value, str(self.checkpoint.value or ""), self.device.value
        self._set_status(f"loading model {name} ...")
        self.runner.start("model", open_session, name, image, checkpoint=ckpt or None, device=device,
                          tiled=LARGE_IMAGES[self.large.value], cache_dir=str(self.cache_dir.value or ""),
                          labels_layer=self.labels_combo.value, make=make_predictor, on_done=self._session_ready)

    def _session_ready(self, result: tuple[Session, str]) -> None:
        session, note = result
        image = session.image_layer
        if note:
            show_warning(f"napari-sam: {note}")
        for layer in (self.points_layer, self.shapes_layer, self.preview_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.points_layer = None

        def add(attr: str, make: Any) -> Any:
            return lambda: setattr(self, attr, make(self.viewer, image))

        # one layer per turn of the event loop: napari draws each new layer before the next comes
        steps = [add("preview_layer", pl.make_preview_layer), add("shapes_layer", pl.make_shapes_layer),
                 add("points_layer", pl.make_points_layer)]
        if self.labels_combo.value is None:
            steps.append(self.new_labels_layer)
        steps.append(lambda: self._layers_ready(session))
        self._run_steps(steps)

    def _run_steps(self, steps: list[Any]) -> None:
        if self._closed or not steps:
            return
        steps[0]()
        if len(steps) > 1:
            QTimer.singleShot(0, lambda: self._run_steps(steps[1:]))

    def _layers_ready(self, session: Session) -> None:
        self.session = session
        self.points_layer.events.data.connect(self._alt_click_negative)
        for layer in (self.points_layer, self.shapes_layer):
            layer.events.data.connect(lambda e=None: self._debounce.start())
        self._bind_keys(self.points_layer, self.shapes_layer, self.labels_combo.value)
        self.points_layer.bind_key("t", lambda _layer: self.toggle(), overwrite=True)
        self.viewer.layers.selection.active = self.points_layer
        self._set_status("session ready: click points or draw boxes")
        self._on_slice_changed()

    def _bind_keys(self, *layers: Any) -> None:
        actions = {"c": self.commit, "n": self.cycle, "Shift-X": self.clear}
        for layer in layers:
            if layer is None:
                continue
            for key, func in actions.items():
                layer.bind_key(key, lambda _layer, f=func: f(), overwrite=True)

    def _alt_click_negative(self, event: Any) -> None:
        """Points added while Alt is held are negative, whatever the T toggle says."""
        if str(getattr(event, "action", "")) not in ("added", "ActionType.ADDED"):
            return
        if not QApplication.keyboardModifiers() & Qt.AltModifier:
            return
        n = len(self.points_layer.data)
        indices = [i % n for i in event.data_indices]
        default = self.points_layer.feature_defaults["prompt"].iloc[0]
        pl.set_polarity(self.points_layer, indices, "negative")
        # napari copies the selected (new, negative) point's features into the defaults after
        # this event; put the T-toggle state back once that has happened
        QTimer.singleShot(0, lambda: self._restore_default(default))

    def _restore_default(self, default: str) -> None:
        if not self._closed and self.points_layer is not None:
            self.points_layer.feature_defaults["prompt"] = default

    def new_labels_layer(self) -> Any:
        """Add an empty Labels layer with the image's shape and select it as target."""
        image = self.image_combo.value
        if image is None:
            show_warning("napari-sam: add an image layer first")
            return None
        layer = pl.make_labels_layer(self.viewer, image, name=f"{image.name} SAM labels")
        self.reset_choices()
        self.labels_combo.value = layer
        if self.session is not None:
            self._bind_keys(layer)
        return layer

    def _on_slice_changed(self) -> None:
        if self.session is None or self._closed:
            return
        pl.show_preview(self.preview_layer, self.session.image_layer, None, None)
        self.session.preview = None
        try:
            ref = self.session.plane(self.viewer.dims)
        except ValueError as exc:
            self._set_status(str(exc))
            return
        if self.session.uses_tiles(ref):
            side = getattr(self.session.predictor, "image_size", "?")
            self._set_status(f"large image: each prompt embeds the {side} px tile around it "
                             "(the first click on a new tile takes a moment)")
            self._debounce.start()
            return
        if not self.session.has_embedding(ref):
            where = f"slice {', '.join(str(i) for i in ref.key)}" if ref.key else "the image"
            self._set_status(f"computing the embedding of {where} ...")
            self.runner.start("embed", self.session.prepare, ref, with_progress=True,
                              on_done=lambda _r=None: self._after_embedding())
        else:
            self._debounce.start()

    def _after_embedding(self) -> None:
        self._set_status("embedding ready: click points or draw boxes")
        self._debounce.start()

    # ------------------------------------------------------------------ preview
    def request_preview(self) -> None:
        """Predict from the current prompts in the background (latest request wins)."""
        if self.session is None or self._closed:
            return
        try:
            prompts = self.session.collect_prompts(self.viewer.dims, points_layer=self.points_layer,
                                                   shapes_layer=self.shapes_layer)
        except ValueError as exc:
            self._set_status(str(exc))
            return
        request = self.session.next_request()
        self.runner.start("preview", self.session.run_prompts, prompts, request=request,
                          on_done=self._show)

    def _show(self, preview: Any) -> None:
        if self._closed or preview is None or self.session is None or preview is not self.session.preview:
            return
        if preview.objects:
            pl.show_preview(self.preview_layer, self.session.image_layer, preview.ref, preview.label_image())
            chosen = [float(o.scores[o.choice]) for o in preview.objects]
            scores = ", ".join(f"{v:.2f}" for v in chosen)
            hint = quality_hint(model_card_of(self.session.predictor), self.session.image_layer, chosen)
            self._set_status(f"preview: {len(preview.objects)} object(s), predicted quality {scores}"
                             + (f". Note: {hint}" if hint else ""))
        else:
            pl.show_preview(self.preview_layer, self.session.image_layer, None, None)
            if str(self.status.value).startswith("preview"):  # the last prompt was removed
                self._set_status("no prompt on this slice: click points or draw boxes")

    def cycle(self) -> None:
        """Show the next of the ambiguity masks."""
        if self.session is None or self.session.preview is None:
            return
        k = self.session.cycle()
        self._show(self.session.preview)
        self._set_status(f"ambiguity mask {k + 1}/3")

    def toggle(self) -> None:
        """Toggle the polarity of the next points."""
        if self.points_layer is None:
            return
        new = pl.toggle_polarity(self.points_layer)
        self.toggle_button.text = f"Next points: {new} [T]"
        self._set_status(f"next points are {new}")

    def clear(self) -> None:
        """Remove every prompt and the preview."""
        pl.clear_prompts(self.points_layer, self.shapes_layer)
        if self.session is not None:
            self.session.preview = None
            pl.show_preview(self.preview_layer, self.session.image_layer, None, None)

    # ------------------------------------------------------------------ commit
    def commit(self) -> list[int]:
        """Write the preview into the target labels (current slice, undoable), clear prompts."""
        labels = self.labels_combo.value
        if self.session is None or labels is None:
            show_warning("napari-sam: start a session and choose a target labels layer")
            return []
        if self.runner.busy("preview"):
            self.runner.wait()
        try:
            ids = self.session.commit(labels, self.viewer.dims, overwrite=bool(self.overwrite.value))
        except ValueError as exc:
            show_warning(f"napari-sam: {exc}")
            return []
        if not ids:
            show_info("napari-sam: nothing written (the object lies on existing labels)")
            return []
        self._last_id = ids[-1]
        self._commits.append(labels)
        self.clear()
        self._set_status(f"committed label(s) {ids}; U undoes")
        return ids

    def undo_last_commit(self) -> bool:
        """Undo the last commit through its labels layer's undo history, whichever layer is active."""
        while self._commits:
            labels = self._commits.pop()
            if labels in self.viewer.layers:
                labels.undo()
                self._set_status("last commit undone")
                return True
        self._set_status("no commit to undo")
        return False

    # ------------------------------------------------------------------ stack work
    def precompute(self) -> None:
        """Embed every slice of the stack (a large image: every tile of the plane) in the background."""
        if self.session is None:
            show_warning("napari-sam: start a session first")
            return
        session, cache = self.session, str(self.cache_dir.value or "")
        model_id = model_identity(self.model_combo.value, str(self.checkpoint.value or ""))

        def job(progress: Any = None, cancel: Any = None) -> tuple[int, str]:
            note = ""
            if cache and cache != "." and session.embedding_cache is None:  # opened here, not on the GUI thread
                try:
                    session.open_disk_cache(cache, model_id=model_id)
                except (ValueError, OSError, ImportError) as exc:
                    note = f"embedding cache not used: {exc}"
            if session.embedding_cache is None:
                session.max_embeddings = max(session.max_embeddings, 4096)
            return session.precompute(self.viewer.dims, progress=progress, cancel=cancel), note

        def done(result: tuple[int, str]) -> None:
            if result[1]:
                show_warning(f"napari-sam: {result[1]}")
            self._set_status(f"{result[0]} embeddings ready")

        self.runner.start("stack", job, with_progress=True, cancellable=True, on_done=done)

    def propagate(self) -> None:
        """Propagate the last committed object up and down the stack (background, cancellable)."""
        labels = self.labels_combo.value
        if self.session is None or labels is None or self._last_id is None:
            show_warning("napari-sam: commit an object first, then propagate it")
            return
        label_id = self._last_id

        def done(result: Any) -> None:
            lref, axis, masks = result
            n = self.session.write_propagation(labels, lref, axis, masks, label_id,
                                               overwrite=bool(self.overwrite.value))
            if n:
                self._commits.append(labels)  # one undo step: U undoes it
            stopped = "cancelled: kept " if getattr(masks, "cancelled", False) else ""
            self._set_status(f"{stopped}label {label_id} propagated to {len(masks)} slice(s) ({n} px)")

        self.runner.start("stack", self.session.propagate, labels, self.viewer.dims, label_id,
                          iou_threshold=float(self.iou.value), with_progress=True, cancellable=True,
                          keep_partial=True, on_done=done)

    @property
    def last_label(self) -> int | None:
        """Id of the last committed object."""
        return self._last_id

