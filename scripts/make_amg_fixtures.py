"""Reference fixtures of the official ``SamAutomaticMaskGenerator`` for tests/test_amg_official.py.

Not part of the product.  The official generator runs in a side environment
(its own venv, never the project's): torch 2.14.1, torchvision 0.29.1,
segment-anything 1.0 and opencv-python-headless (for
``min_mask_region_area``), installed from the package registry.  The script

1. writes the test images into ``tests/fixtures/amg_official/`` (a synthetic
   nuclei image; the second image is the shared fixture ``tiny_vit/image_1.npy``),
2. creates the side venv (``--venv``, default ``out/amg_official_venv``) if it
   is missing, and
3. re-runs itself in that venv with ``--official``: each model of ``MODELS``
   is built from its config in the official classes, its weights loaded, and
   the official generator run on each image for each parameter set of
   ``CASES``.  Per mask it stores the bounding box (official XYWH, inclusive
   corners), area, predicted IoU, stability score and a hash of the mask
   (:func:`mask_hash`, computed the same way by the test), one gzipped JSON
   file per model and image (:func:`write_reference`).

Usage::

    PYTHONPATH=src python scripts/make_amg_fixtures.py            # all of it
    PYTHONPATH=src python scripts/make_amg_fixtures.py --venv /tmp/v

Everything runs on CPU in float32; results are deterministic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "amg_official"
SHARED = Path(os.environ.get("NAPARI_SAM_FIXTURES", REPO.parent / "shared" / "fixtures")) / "sam_reference"
SIDE_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "segment-anything==1.0", "opencv-python-headless"]

#: model name -> (config JSON, key holding the config or None, weights file); paths relative to the repo
MODELS = {
    "builtin": ("src/napari_sam/data/builtin_model.card.json", "config", "src/napari_sam/data/builtin_model.pt"),
}

#: image name -> how to get it: ("shared", file in SHARED/tiny_vit) or ("fixture", file in OUT)
IMAGES = {
    "nuclei": ("fixture", "nuclei.npz"),
    "image_1": ("shared", "image_1.npy"),
}

_LOW = {"pred_iou_thresh": 0.3, "stability_score_thresh": 0.5}
#: case name -> parameters of SamAutomaticMaskGenerator (points_per_side 32, as the official default)
CASES = {
    "defaults": {},
    "low_thresholds": dict(_LOW),
    "low_thresholds_tight_nms": {**_LOW, "box_nms_thresh": 0.3},
    "crop_layer": {**_LOW, "crop_n_layers": 1},
    "min_area": {**_LOW, "min_mask_region_area": 60, "box_nms_thresh": 0.5},
    "crop_layer_min_area": {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.8, "crop_n_layers": 1,
                            "min_mask_region_area": 40},
}


HASH_CHARS = 12
#: one row per mask in the fixture files
COLUMNS = ["x", "y", "w", "h", "area", "predicted_iou", "stability_score", "hash"]


def mask_hash(mask: np.ndarray) -> str:
    """Hash of a full-image boolean mask: its bounding box and the packed pixels inside it."""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return "empty"
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return local_mask_hash(mask[r0:r1, c0:c1], (r0, c0))


def local_mask_hash(local: np.ndarray, origin_rc: tuple[int, int]) -> str:
    """Hash of a mask given by its tight bbox-local pixels and the bbox's top-left (row, col)."""
    local = np.ascontiguousarray(local, dtype=bool)
    h = hashlib.sha256()
    h.update(np.asarray([origin_rc[0], origin_rc[1], *local.shape], dtype=np.int64).tobytes())
    h.update(np.packbits(local, axis=None).tobytes())
    return h.hexdigest()[:HASH_CHARS]


def write_reference(path: Path, result: dict) -> None:
    """Write one model/image result compactly: gzipped JSON, one row of ``COLUMNS`` per mask.

    ``x, y, w, h`` is the official XYWH box (``w`` = last column - first
    column); scores are rounded to 7 decimals (float32 carries about 7 digits).
    """
    import gzip

    out = dict(result, columns=COLUMNS, cases={})
    for case, ref in result["cases"].items():
        rows = [[*m["bbox_xywh"], m["area"], round(m["predicted_iou"], 7), round(m["stability_score"], 7),
                 m["hash"][:HASH_CHARS]] for m in ref["masks"]]
        out["cases"][case] = dict(ref, masks=rows)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"))


def read_reference(path: Path) -> dict:
    """A file of :func:`write_reference`, masks as dicts (``bbox_xywh``, ``area``, scores, ``hash``)."""
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        result = json.load(f)
    for ref in result["cases"].values():
        ref["masks"] = [
            {"bbox_xywh": row[:4], "area": row[4], "predicted_iou": row[5], "stability_score": row[6],
             "hash": row[7]}
            for row in ref["masks"]
        ]
    return result


def load_image(name: str) -> np.ndarray:
    """The RGB uint8 image both generators see (a grayscale fixture is repeated into 3 channels)."""
    where, file = IMAGES[name]
    if where == "fixture":
        with np.load(OUT / file) as data:
            img = data["image"]
    else:
        img = np.load(SHARED / "tiny_vit" / file)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img, dtype=np.uint8)


def write_images() -> None:
    """Write the synthetic nuclei image (grayscale uint8) with the project's generator."""
    from napari_sam.synthetic import make_nuclei_image

    OUT.mkdir(parents=True, exist_ok=True)
    image, _ = make_nuclei_image((256, 288), dtype="uint8", seed=3)
    np.savez_compressed(OUT / "nuclei.npz", image=image)


def model_config(name: str) -> dict:
    path, key, _ = MODELS[name]
    cfg = json.loads((REPO / path).read_text())
    return cfg[key] if key else cfg


# ---------------------------------------------------------------- side environment only
def build_official_sam(cfg: dict, weights: Path):  # pragma: no cover - runs in the side venv
    """The official ``Sam`` built from a config of the fixture schema, weights loaded strictly."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    enc, dec = cfg["image_encoder"], cfg["decoder"]
    if enc["type"] != "vit":
        raise ValueError("only ViT encoders are built here")
    grid = cfg["image_size"] // enc["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=enc["depth"], embed_dim=enc["embed_dim"], img_size=enc["img_size"], mlp_ratio=enc["mlp_ratio"],
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=enc["num_heads"],
            patch_size=enc["patch_size"], qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=enc["global_attn_indexes"], window_size=enc["window_size"],
            out_chans=enc["out_chans"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg["prompt_embed_dim"], image_embedding_size=(grid, grid),
            input_image_size=(cfg["image_size"], cfg["image_size"]), mask_in_chans=cfg["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=dec["num_multimask_outputs"],
            transformer=TwoWayTransformer(
                depth=dec["depth"], embedding_dim=cfg["prompt_embed_dim"], mlp_dim=dec["mlp_dim"],
                num_heads=dec["num_heads"],
            ),
            transformer_dim=cfg["prompt_embed_dim"], iou_head_depth=dec["iou_head_depth"],
            iou_head_hidden_dim=dec["iou_head_hidden_dim"],
        ),
        pixel_mean=cfg.get("pixel_mean", [123.675, 116.28, 103.53]),
        pixel_std=cfg.get("pixel_std", [58.395, 57.12, 57.375]),
    )
    state = torch.load(weights, map_location="cpu")
    state = state.get("model", state) if isinstance(state, dict) else state
    sam.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return sam.eval()


def run_official() -> None:  # pragma: no cover - runs in the side venv
    import cv2
    import segment_anything
    import torch
    import torchvision
    from segment_anything import SamAutomaticMaskGenerator

    torch.set_num_threads(2)
    versions = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "segment_anything": getattr(segment_anything, "__version__", "1.0"), "opencv": cv2.__version__,
        "numpy": np.__version__,
    }
    for model_name, (_, _, weights) in MODELS.items():
        sam = build_official_sam(model_config(model_name), REPO / weights)
        for image_name in IMAGES:
            image = load_image(image_name)
            result = {"model": model_name, "image": image_name, "image_shape": list(image.shape[:2]),
                      "versions": versions, "cases": {}}
            for case, params in CASES.items():
                t0 = time.perf_counter()
                gen = SamAutomaticMaskGenerator(sam, points_per_side=32, output_mode="binary_mask", **params)
                anns = gen.generate(image)
                seconds = time.perf_counter() - t0
                masks = [
                    {
                        "bbox_xywh": [int(v) for v in a["bbox"]],
                        "area": int(a["area"]),
                        "predicted_iou": float(a["predicted_iou"]),
                        "stability_score": float(a["stability_score"]),
                        "hash": mask_hash(a["segmentation"]),
                    }
                    for a in anns
                ]
                result["cases"][case] = {"params": {"points_per_side": 32, **params}, "masks": masks,
                                         "seconds": round(seconds, 1)}
                print(f"{model_name} {image_name} {case}: {len(masks)} masks in {seconds:.1f} s", flush=True)
            write_reference(OUT / f"{model_name}_{image_name}.json.gz", result)


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", *SIDE_PACKAGES], check=True)
    return python


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=REPO / "out" / "amg_official_venv")
    parser.add_argument("--official", action="store_true", help="(internal) run the official generator here")
    args = parser.parse_args(argv)
    if args.official:
        run_official()
        return
    write_images()
    python = ensure_venv(args.venv)
    subprocess.run([str(python), __file__, "--official"], check=True, cwd=REPO)


if __name__ == "__main__":
    main()
