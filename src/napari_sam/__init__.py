"""napari-sam: Segment Anything for scientific imaging.

The public core API is importable from here without pulling in napari, Qt or
torch: names are imported on first use (``__init__.pyi`` lists them for static
tools).
"""

from __future__ import annotations

import lazy_loader

__version__ = "0.1.0"

__getattr__, _, _names = lazy_loader.attach(
    __name__,
    submod_attrs={
        "automatic.generator": ["AutomaticMaskGenerator"],
        "automatic.labels": ["masks_to_labels"],
        "automatic.params": ["AmgParams"],
        "model.cards": ["ModelCard"],
        "model.checkpoint": ["CheckpointError"],
        "model.registry": ["available_models", "build_model", "fetch_checkpoint", "load_model", "model_card",
                           "register_model", "resolve_device"],
        "model.sam": ["Sam"],
        "model.saved": ["save_model"],
        "normalize": ["estimate_contrast_limits", "to_rgb_uint8"],
        "predict.correction": ["PreviousResult"],
        "predict.factory": ["make_predictor"],
        "predict.pipeline": ["PromptPipeline", "PromptResult"],
        "predict.predictor": ["Predictor"],
        "progress": ["Cancelled"],
        "threads": ["limit_threads"],
        "tiled.tiles": ["segment_image"],
        "training.finetune": ["finetune"],
        "volume.batch": ["segment_volume"],
        "volume.cache": ["EmbeddingCache"],
        "volume.embed": ["embed_volume"],
        "volume.io": ["open_image"],
        "volume.tables": ["object_table"],
        "volume.vectors": ["write_vectors"],
    },
)
__all__ = ["__version__", *_names]
del _, _names


def __dir__() -> list[str]:
    return sorted(__all__)
