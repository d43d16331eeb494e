"""The ``napari-sam`` command: segment, embed, models, info, demo.

Run ``napari-sam --help`` or ``python -m napari_sam.cli --help``; every
subcommand has its own ``--help``.  See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam import _cli_finetune

__all__ = ["main", "build_parser"]


class _Bars:
    """``progress(done, total, desc)`` -> one tqdm bar per stage (rate and ETA)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.desc = None

    def __call__(self, done: int, total: int, desc: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if desc != self.desc or self.bar is None:
            self.close()
            self.bar = tqdm(total=total, desc=desc, unit="slice" if desc == "slices" else "it",
                            initial=done, file=sys.stderr, dynamic_ncols=True)
            self.desc = desc
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="image or volume: .tif/.tiff (OME-TIFF, GeoTIFF), .npy, zarr array, OME-Zarr")
    p.add_argument("--axes", help="axes of the input, e.g. YX, ZYX, TZYX, ZCYX, YXS (overrides metadata)")
    p.add_argument("--level", type=int, default=0, help="resolution level of a multiscale input (default 0)")
    p.add_argument("--channel", type=int, help="segment this one channel of the C (or S) axis")
    p.add_argument("--channels", type=int, nargs="+", metavar="I",
                   help="one to three channels of the C (or S) axis shown to SAM as R, G, B")
    p.add_argument("--contrast-limits", type=float, nargs="+", metavar="V",
                   help="LOW HIGH per selected channel (default: percentiles 0.5/99.5 of sampled slices)")
    p.add_argument("--model", default="builtin", help="model name (see `napari-sam models list`) or config .json")
    p.add_argument("--checkpoint", help="local checkpoint file for --model (default: the cached download)")
    p.add_argument("--device", help="torch device (default: CUDA, then MPS, then CPU)")
    p.add_argument("--tile", type=int, help="tile side in pixels for large slices (default: the model's choice)")
    p.add_argument("--halo", type=int, help="tile overlap in pixels (default: the model's choice)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a zarr input with missing chunks (default: warn and read them as empty)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``napari-sam``."""
    parser = argparse.ArgumentParser(
        prog="napari-sam", description="Segment Anything for scientific images: headless tools.",
        epilog="Run `napari-sam COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    # --debug also after the command (`napari-sam segment ... --debug`); SUPPRESS keeps the value given before it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_subparser(debug))

    seg = sub.add_parser("segment", help="automatic labelling of an image or volume into a labels zarr",
                         description="Label every 2-D slice with automatic SAM mask generation and write "
                         "a uint32 zarr labels array (ids unique across the volume).")
    _input_args(seg)
    out = seg.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="output labels, format by suffix: labels.zarr (zarr array), "
                     "labels.ome.zarr (OME-Zarr labels), labels.tif / labels.ome.tif (TIFF; GeoTIFF for a GeoTIFF input)")
    out.add_argument("--label-name", help="OME-Zarr input: write into its labels/NAME group (default 'sam' "
                     "when the input is OME-Zarr and no --output is given)")
    seg.add_argument("--zarr-format", type=int, choices=(2, 3), default=3,
                     help="zarr format of a .zarr output (default 3; 2 for older readers such as GDAL)")
    seg.add_argument("--resume", action="store_true", help="continue an interrupted run, skipping finished slices")
    seg.add_argument("--overwrite", action="store_true", help="replace an existing output")
    seg.add_argument("--scheduler", help="threads (default), processes, synchronous, or a dask.distributed "
                     "scheduler address such as tcp://10.0.0.5:8786")
    seg.add_argument("--workers", type=int, help="local parallel slices (default 1 with SAM: torch uses all cores)")
    seg.add_argument("--no-compact", dest="compact", action="store_false",
                     help="keep per-slice id blocks instead of renumbering ids to 1..N at the end")
    seg.add_argument("--link-3d", action="store_true", help="join objects of neighbouring Z slices into 3-D objects")
    seg.add_argument("--link-iou", type=float, default=0.5,
                     help="IoU above which objects of neighbouring slices are joined (default 0.5)")
    seg.add_argument("--cache", help="embedding cache folder (filled by `napari-sam embed`) to reuse")
    seg.add_argument("--table", metavar="CSV", help="also write one row per object (id, slice, area, bbox, centroid, "
                     "predicted IoU, stability score, prompt point) to this .csv file")
    seg.add_argument("--vector", metavar="FILE", help="also write one polygon per label (with its id and scores) "
                     "to this .gpkg or .geojson file, in the CRS of a GeoTIFF input (needs the geo extra)")
    seg.add_argument("--threads", type=int, metavar="N", help="torch and BLAS threads per running slice (default: "
                     "all cores with one worker; cores / --workers; one per worker thread on a dask cluster)")
    seg.add_argument("--points-per-side", type=int, help="AMG grid points per side")
    seg.add_argument("--pred-iou-thresh", type=float, help="AMG predicted-IoU filter")
    seg.add_argument("--stability-score-thresh", type=float, help="AMG stability-score filter")
    seg.add_argument("--min-mask-region-area", type=int, help="remove holes/islands smaller than this")
    seg.add_argument("--quiet", action="store_true", help="no progress bars")

    emb = sub.add_parser("embed", help="precompute image embeddings into a cache",
                         description="Run the SAM image encoder on every slice/tile and store the "
                         "embeddings in a zarr cache that `segment --cache` and the napari plugin reuse.")
    _input_args(emb)
    emb.add_argument("--cache", required=True, help="cache folder to create or fill")
    emb.add_argument("--reset-cache", action="store_true", help="empty a cache made for other data/settings")
    emb.add_argument("--quiet", action="store_true", help="no progress bars")

    mod = sub.add_parser("models", help="list, fetch and verify model checkpoints",
                         description="Manage SAM checkpoints (downloaded with a known hash into the cache "
                         "folder, $NAPARI_SAM_CACHE to override).")
    msub = mod.add_subparsers(dest="models_command", metavar="ACTION", parser_class=_subparser(debug))
    msub.add_parser("list", help="known model names")
    f = msub.add_parser("fetch", help="download a checkpoint into the cache")
    f.add_argument("name")
    v = msub.add_parser("verify", help="check a checkpoint file (or cached NAME) against the published sha256",
                        description="Compare the sha256 of a checkpoint file with the published hashes of the "
                        "registered models and load it strictly. Exit 1 when a file that should be a published "
                        "checkpoint has another hash.")
    v.add_argument("target", help="model name or checkpoint path")
    v.add_argument("--model", help="architecture of an unknown checkpoint file: a model name or card "
                   "(default: the registered model with the file's tensor shapes)")
    msub.add_parser("path", help="print the checkpoint cache folder")

    sub.add_parser("info", help="versions, device and threads", description="Print versions, device and threads.")
    _cli_finetune.add_parser(sub)

    demo = sub.add_parser("demo", help="label generated sample data (offline)",
                          description="Generate a small 2-D nuclei image and a 3-D stack, label them with "
                          "the built-in model and write labels zarr arrays and a PNG overlay.")
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--model", default="builtin", help="model to use (default builtin)")
    demo.add_argument("--points-per-side", type=int, help="AMG grid points per side (default 16)")
    demo.add_argument("--pred-iou-thresh", type=float, help="AMG predicted-IoU filter")
    demo.add_argument("--stability-score-thresh", type=float, help="AMG stability-score filter")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _subparser(parent: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    """An ArgumentParser class whose instances inherit the arguments of ``parent``."""

    class SubParser(argparse.ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("parents", [parent])
            super().__init__(*args, **kwargs)

    return SubParser


def _amg_params(args: argparse.Namespace) -> dict:
    names = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_mask_region_area")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _common(args: argparse.Namespace) -> dict:
    limits = None
    if args.contrast_limits is not None:
        if len(args.contrast_limits) % 2:
            raise ValueError("--contrast-limits needs LOW HIGH pairs, one pair per channel")
        limits = [args.contrast_limits[i:i + 2] for i in range(0, len(args.contrast_limits), 2)]
    return dict(
        axes=args.axes, level=args.level, channel=args.channel, channels=args.channels,
        contrast_limits=limits, model=args.model, checkpoint=args.checkpoint, device=args.device,
        tile_shape=None if args.tile is None else (args.tile, args.tile),
        halo=None if args.halo is None else (args.halo, args.halo), strict=args.strict,
    )


def _cmd_segment(args: argparse.Namespace) -> int:
    from napari_sam.volume.batch import segment_volume
    from napari_sam.volume.io import ome_zarr_root
    from napari_sam.volume.options import OutputOptions, RunOptions, SourceOptions, TileOptions

    common = _common(args)
    label_name = args.label_name
    if args.output is None and label_name is None:
        if ome_zarr_root(args.input) is None:
            raise ValueError("give an output with -o/--output (for an OME-Zarr input, --label-name also works)")
        label_name = "sam"
    source = SourceOptions(**{k: common.pop(k) for k in ("axes", "level", "channel", "channels", "contrast_limits",
                                                          "strict")})
    tiles = TileOptions(tile_shape=common.pop("tile_shape"), halo=common.pop("halo"))
    output = OutputOptions(resume=args.resume, overwrite=args.overwrite, compact=args.compact,
                           label_name=label_name, link_3d=args.link_3d, link_iou=args.link_iou,
                           zarr_format=args.zarr_format)
    if args.cache is not None and Path(args.cache).is_file():
        raise ValueError(f"--cache {args.cache} is a file; give a folder for the embedding cache")
    if args.vector is not None:
        from napari_sam.volume.vectors import check_vector_target

        check_vector_target(args.vector, overwrite=args.overwrite)  # before the run: suffix, extra, existing file
    bars = _Bars(not args.quiet)
    run = RunOptions(scheduler=args.scheduler, workers=args.workers, progress=bars, threads=args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the scores of --vector come from the object table
        table = args.table or (str(Path(tmp) / "objects.csv") if args.vector else None)
        try:
            result = segment_volume(args.input, args.output, source_options=source, tiles=tiles,
                                    output_options=output, run=run, cache=args.cache, table=table, **common,
                                    **_amg_params(args))
            if args.vector is not None:
                from napari_sam.volume.vectors import georeference, write_vectors

                transform, crs = georeference(args.input, shape=tuple(result.shape[-2:]))
                write_vectors(result, args.vector, scores=table, transform=transform, crs=crs,
                              overwrite=args.overwrite, progress=bars)
        finally:
            bars.close()
    where = args.output or str(Path(args.input) / "labels" / label_name)
    print(f"wrote labels {tuple(result.shape)} uint32 to {where} in {time.perf_counter() - start:.1f} s")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from napari_sam.volume.embed import embed_volume

    if Path(args.cache).is_file():
        raise ValueError(f"--cache {args.cache} is a file; give a folder for the embedding cache")
    bars = _Bars(not args.quiet)
    try:
        n = embed_volume(args.input, args.cache, reset_cache=args.reset_cache, progress=bars, **_common(args))
    finally:
        bars.close()
    print(f"cache {args.cache}: {n} embeddings")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from napari_sam.model import registry as models

    action = args.models_command or "list"
    if action == "list":
        for name in models.available_models():
            print(name)
    elif action == "path":
        print(models.cache_dir())
    elif action == "fetch":
        print(models.fetch_checkpoint(args.name))
    elif action == "verify":
        from napari_sam.model.verify import verify_weights

        verdict = verify_weights(args.target, model=args.model)
        if not verdict.ok:
            print(f"napari-sam models: error: {verdict.message}", file=sys.stderr)
            return 1
        print(verdict.message)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import dask
    import numpy
    import tifffile
    import torch
    import zarr

    import napari_sam
    from napari_sam.model.registry import resolve_device

    device = str(resolve_device(None))
    print(f"napari-sam {napari_sam.__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    for mod in (torch, numpy, dask, zarr, tifffile):
        print(f"{mod.__name__} {mod.__version__}")
    print(f"device {device}")
    print(f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    return 0


def _demo_data(seed: int = 0) -> tuple:
    from napari_sam.synthetic import make_nuclei_image, make_nuclei_stack

    return make_nuclei_image((256, 256), seed=seed)[0], make_nuclei_stack((3, 128, 128), seed=seed)[0]


def _overlay(image: np.ndarray, labels: np.ndarray) -> Any:
    """Gray image with labels in random colours (alpha 0.45) and white outlines, as a PIL image."""
    from PIL import Image
    from skimage.segmentation import find_boundaries

    img = image.astype(np.float64)
    lo, hi = np.percentile(img, (0.5, 99.5))
    gray = np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    colours = np.random.default_rng(1).uniform(0.2, 1.0, size=(int(labels.max()) + 1, 3))
    fg = labels > 0
    rgb[fg] = 0.55 * rgb[fg] + 0.45 * colours[labels[fg]]
    rgb[find_boundaries(labels, mode="inner")] = 1.0
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def _run_demo(out: Path, *, model: str, quiet: bool, amg_overrides: dict | None = None) -> int:
    import json

    from PIL import Image

    from napari_sam.volume.batch import segment_volume

    out.mkdir(parents=True, exist_ok=True)
    amg: dict[str, Any] = {"points_per_side": 16}
    from napari_sam.model.registry import available_models

    have_model = model in available_models() or Path(model).is_file()
    if have_model:  # the model card's thresholds are applied by the automatic generator
        model_ref, note = model, f"model: {model}"
    else:
        import torch

        torch.manual_seed(0)
        model_ref = str(out / "random_small_model.json")
        from napari_sam.model.catalog import _vit_config

        # a small ViT SAM (SAM's layout, 2 blocks of width 64) with random weights
        Path(model_ref).write_text(json.dumps(_vit_config(embed_dim=64, depth=2, num_heads=2, global_attn=[1])))
        amg = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
        note = (f"WARNING: model {model!r} is not installed, so this demo used a small SAM with RANDOM "
                "weights: the pipeline runs end to end but the labels are NOT meaningful. Install the "
                "built-in model or pass --model vit_b (after `napari-sam models fetch vit_b`).")
    amg.update(amg_overrides or {})
    print(note)
    print("automatic mask generation: " + ", ".join(f"{k}={v}" for k, v in amg.items()))
    image2d, stack = _demo_data()
    np.save(out / "image2d.npy", image2d)
    np.save(out / "stack3d.npy", stack)
    start = time.perf_counter()
    results = {}
    for name, src, extra in (("labels.zarr", "image2d.npy", {}), ("labels3d.zarr", "stack3d.npy", {"link_3d": True})):
        bars = _Bars(not quiet)
        try:
            results[name] = segment_volume(out / src, out / name, model=model_ref, overwrite=True, progress=bars,
                                           **extra, **amg).compute()
        finally:
            bars.close()
    lab2d, lab3d = results["labels.zarr"], results["labels3d.zarr"]
    mid = stack.shape[0] // 2
    left, right = _overlay(image2d, lab2d), _overlay(stack[mid], lab3d[mid]).resize((256, 256), Image.NEAREST)
    canvas = Image.new("RGB", (512 + 8, 256), "black")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (256 + 8, 0))
    canvas.save(out / "overlay.png")
    print(f"2-D image {image2d.shape}: {int(lab2d.max())} objects -> {out / 'labels.zarr'}")
    print(f"3-D stack {stack.shape}: {int(lab3d.max())} objects (linked across z) -> {out / 'labels3d.zarr'}")
    print(f"overlay (2-D | middle z slice) -> {out / 'overlay.png'}   [{time.perf_counter() - start:.0f} s]")
    if not have_model:
        print("(random weights: see the warning above)")
    elif int(lab2d.max()) == 0:
        print("no mask passed the quality filters: try lower --pred-iou-thresh / --stability-score-thresh")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return _run_demo(Path(args.out), model=args.model, quiet=args.quiet, amg_overrides=_amg_params(args))


#: exceptions that mean "the command was used wrongly" (exit 2); anything else is a run error (exit 1)
_USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError)


def _one_line(exc: BaseException) -> str:
    """What happened and what to do, in one line."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (f"the disk is full ({exc.filename or exc}); free some space and rerun with --resume "
                "(finished slices are kept)")
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {exc.filename or ''} ({exc.strerror}); choose a writable output folder"
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller --tile or fewer --workers"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, _USAGE_ERRORS):
        return text
    return f"{text} (run with --debug for the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-sam`` console script.

    Exit codes: 0 success, 1 a run error, 2 a usage error (bad option or input),
    130 interrupted.  Errors are one line on stderr; ``--debug`` shows the traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"segment": _cmd_segment, "embed": _cmd_embed, "models": _cmd_models,
                "info": _cmd_info, "demo": _cmd_demo, "finetune": _cli_finetune.run}
    if args.command is None:
        parser.print_help()
        return 2
    import warnings

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"napari-sam {args.command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    previous = _stop_on_first_interrupt()
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.showwarning = one_line_warning
            return commands[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted: finished slices are kept; rerun with --resume to continue", file=sys.stderr)
        if argv is None:  # the console command: do not wait for a running slice to finish
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one actionable line
        if args.debug:
            raise
        print(f"napari-sam {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, _USAGE_ERRORS) else 1
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGINT, previous)


def _first_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler: ignore every further Ctrl-C *before* raising, so shutting down prints no traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _stop_on_first_interrupt() -> Any:
    """Install :func:`_first_interrupt` for SIGINT; returns the handler to restore (None: nothing installed).

    Only from the main thread, and only over Python's default handler (a shell that
    started the command with Ctrl-C ignored, or a host application's own handler, is respected).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        return None
    signal.signal(signal.SIGINT, _first_interrupt)
    return previous


if __name__ == "__main__":
    sys.exit(main())
