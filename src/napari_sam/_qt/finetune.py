"""The "Fine-tune (SAM)" dock: train a model on the objects of a Labels layer."""

from __future__ import annotations

from typing import Any

import napari
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from napari_sam._napari.finetune import default_model_folder, finetune_and_register
from napari_sam._napari.predictors import model_choices, model_list_changed, on_model_list_change
from napari_sam._qt._workers import Runner

__all__ = ["FinetuneWidget"]


class FinetuneWidget(Container):
    """Pick an image and the Labels layer painted on it, fine-tune, and offer the result as a model."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.image_combo = ComboBox(label="image", choices=self._layers("Image"))
        self.labels_combo = ComboBox(label="labels", choices=self._layers("Labels"))
        self.base = ComboBox(label="base model", choices=model_choices())
        self.name = LineEdit(label="new model name", value="my_model")
        self.folder = FileEdit(label="save in", mode="d", value=str(default_model_folder()))
        self.steps = SpinBox(label="steps", value=200, min=1, max=100_000)
        self.validation = FloatSpinBox(label="held-out fraction", value=0.2, min=0.0, max=0.9, step=0.05)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"])
        self.run_button = PushButton(text="Fine-tune")
        self.cancel_button = PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="paint objects in a Labels layer, then Fine-tune")
        self.result = Label(label="held-out", value="")
        self.extend([self.image_combo, self.labels_combo, self.base, self.name, self.folder, self.steps,
                     self.validation, self.device, self.run_button, self.cancel_button, self.progress,
                     self.status, self.result])
        self.runner = Runner(self.progress, self._set_status)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.runner.cancel)
        self.report: dict[str, Any] | None = None
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        self._stop_model_updates = on_model_list_change(self._set_model_choices)
        self.native.destroyed.connect(self._disconnect)

    def _disconnect(self, *_: Any) -> None:
        self.runner.closed = True
        self._stop_model_updates()
        self.viewer.layers.events.inserted.disconnect(self.reset_choices)
        self.viewer.layers.events.removed.disconnect(self.reset_choices)

    def _layers(self, kind: str):
        return lambda *_: [layer for layer in self.viewer.layers if type(layer).__name__ == kind]

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def run(self, *_: Any) -> None:
        """Start fine-tuning in a background worker."""
        image, labels = self.image_combo.value, self.labels_combo.value
        if image is None or labels is None:
            self._set_status("choose an image and a Labels layer")
            return
        if self.runner.busy():
            return
        self.result.value = ""
        self.runner.start(
            "finetune", finetune_and_register, image.data, labels.data, base=str(self.base.value),
            name=str(self.name.value).strip(), folder=str(self.folder.value), rgb=bool(image.rgb),
            steps=int(self.steps.value), validation=float(self.validation.value), device=str(self.device.value),
            on_done=self._done, with_progress=True, cancellable=True,
        )

    def _done(self, report: dict[str, Any]) -> None:
        self.report = report
        if report.get("cancelled"):
            self._set_status(f"cancelled after {report['steps_done']} steps; model {report['name']!r} saved")
        else:
            self._set_status(f"model {report['name']!r} ready in the model lists")
        if "before" in report and "after" in report:
            self.result.value = ", ".join(f"{k} {report['before'][k]:.2f} -> {report['after'][k]:.2f}"
                                          for k in report["before"])
        else:
            self.result.value = "needs 2 or more labelled slices"
        model_list_changed()  # the new model appears in every napari-sam dock's list

    def _set_model_choices(self, choices: list[str]) -> None:
        self.base.choices = choices
