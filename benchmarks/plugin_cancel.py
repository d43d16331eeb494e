"""Benchmark: how long the automatic dock's Cancel takes to stop a tiled run (built-in model, CPU).

Runs the automatic session on a 2048² synthetic image with the tiles chosen automatically and
sets the cancel event after 3 s and 7.3 s (mid-run); prints the seconds from the cancel to the
return of the run.

Usage::

    python benchmarks/plugin_cancel.py
"""
import threading
import time

from napari.components import ViewerModel

import napari_sam
from napari_sam._napari.automatic import AutomaticSession, auto_tiles
from napari_sam.model.registry import recommended_amg_params
from napari_sam.synthetic import make_nuclei_image

image, _ = make_nuclei_image((2048, 2048), seed=0)
v = ViewerModel()
img = v.add_image(image)
p = napari_sam.make_predictor("builtin", device="cpu")
s = AutomaticSession(p, img)
refs = s.planes(v.dims)
tile, halo = auto_tiles(refs[0].shape, p)
print(tile, halo)
cancel = threading.Event()
seen = []
for delay in (3.0, 7.3):
    cancel.clear()
    t = threading.Timer(delay, lambda: (seen.append(time.perf_counter()), cancel.set()))
    t.start()
    s.run(refs, params={**recommended_amg_params("builtin"), "points_per_side": 32}, tile_shape=tile, halo=halo,
          cancel=cancel, keep_partial=True)
    print("cancel latency %.3f s" % (time.perf_counter() - seen[-1]), s.cancelled)
