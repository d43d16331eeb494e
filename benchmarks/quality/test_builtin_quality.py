"""Quality of the shipped built-in model on held-out synthetic nuclei (bands in bands_builtin.json).

Every image here comes from :mod:`napari_sam.synthetic` with seeds of the
held-out range (``VAL_SEED_START + 1000 + i``, never used in training); the
reference is the generator's ground truth.  The behaviour these numbers rest on
(prompts reach the model, thresholds are applied, labels are written) is
proven in ``tests/``; here only the numbers one trained model reaches are
checked.
"""

from __future__ import annotations

import numpy as np
import pytest
from builtin_recipe import VAL_SEED_START

# the held-out evaluation images (scripts/eval_builtin.py uses VAL_SEED_START + 1000 + i)
SMOKE_SEEDS = [VAL_SEED_START + 1000 + i for i in range(4)]


@pytest.fixture(scope="module")
def smoke_data():
    from napari_sam.synthetic import make_nuclei_image

    data = [make_nuclei_image((256, 256), kind="nuclei", seed=s) for s in SMOKE_SEEDS]
    return [d[0] for d in data], [d[1] for d in data]


def test_single_click_beats_a_disk_of_the_median_radius(builtin_predictor, smoke_data, bands):
    """One click per object against a disk of the median object radius at the click.

    The margin is largest on objects of at least 20 px diameter; on all sizes
    the mean stays above the disk's (about 0.55).
    """
    from napari_sam.training.evaluate import disk_baseline_ious, object_diameters, prompted_ious

    images, labels = smoke_data
    ious = prompted_ious(builtin_predictor, images, labels, prompt="point")
    baseline = disk_baseline_ious(labels)
    diam = object_diameters(labels)
    assert ious.size == baseline.size == diam.size
    big = diam >= 20
    assert big.sum() >= 15
    b = bands("builtin")
    b.check("point_miou_over_disk_20px", ious[big].mean() - baseline[big].mean())
    b.check("point_miou", ious.mean())


def test_box_prompts(builtin_predictor, smoke_data, bands):
    from napari_sam.training.evaluate import object_diameters, prompted_ious

    images, labels = smoke_data
    boxes = prompted_ious(builtin_predictor, images, labels, prompt="box")
    big = object_diameters(labels) >= 20
    bands("builtin").check("box_miou_20px", boxes[big].mean())


def test_recommended_thresholds_find_the_nuclei(bands):
    """The model's shipped AMG thresholds (used by default) against SAM's 0.88 / 0.95."""
    from napari_sam.normalize import estimate_contrast_limits
    from napari_sam.synthetic import make_nuclei_image
    from napari_sam.training.evaluate import match_instances
    from napari_sam.volume.batch import sam_segment

    img, truth = make_nuclei_image((256, 256), kind="nuclei", seed=1_001_003)
    limits = estimate_contrast_limits(img)
    default = sam_segment(img, channel_axis=None, contrast_limits=limits)
    sam_defaults = sam_segment(img, channel_axis=None, contrast_limits=limits,
                               amg_params={"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95})
    f1 = match_instances(default, truth)["f1"]
    b = bands("builtin")
    b.check("amg_f1_recommended", f1)
    b.check("amg_f1_gain_over_sam_thresholds", f1 - match_instances(sam_defaults, truth)["f1"])


def test_automatic_session_with_recommended_params(builtin_model, bands):
    """The plugin's automatic session with the model's shipped parameters on an unseen image."""
    from napari.components import ViewerModel

    from napari_sam._napari.automatic import AutomaticSession
    from napari_sam.model.registry import recommended_amg_params
    from napari_sam.predict.predictor import Predictor
    from napari_sam.synthetic import make_nuclei_image
    from napari_sam.training.evaluate import match_instances

    image, truth = make_nuclei_image((256, 256), kind="nuclei", seed=1_001_004)
    img = ViewerModel().add_image(image)
    session = AutomaticSession(Predictor(builtin_model, device="cpu"), img)
    refs = session.planes(ViewerModel().dims)
    labels = session.run(refs, params=recommended_amg_params("builtin"))[refs[0]]
    bands("builtin").check("session_amg_f1", match_instances(labels, truth)["f1"])


def test_demo_labels_sit_on_nuclei(tmp_path, bands):
    """`napari-sam demo` (built-in model, offline) against the generator's ground truth."""
    import zarr

    from napari_sam.cli import main
    from napari_sam.synthetic import make_nuclei_image
    from napari_sam.training.evaluate import match_instances

    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    found = np.asarray(zarr.open_array(str(tmp_path / "demo" / "labels.zarr"), mode="r")[:])
    _, truth = make_nuclei_image((256, 256), seed=0)
    b = bands("builtin")
    b.check("demo_n_objects", found.max())
    b.check("demo_fraction_on_foreground", (truth[found > 0] > 0).mean())
    b.check("demo_tp", match_instances(found, truth.astype(np.int64), iou_threshold=0.5)["tp"])


def test_propagation_follows_the_largest_nucleus(builtin_model, bands):
    """Mask-prompt propagation through a synthetic stack, against the stack's ground truth."""
    from napari_sam._napari.propagate import mask_iou, propagate_object
    from napari_sam.predict.predictor import Predictor
    from napari_sam.synthetic import make_nuclei_stack

    predictor = Predictor(builtin_model, device="cpu")
    stack, truth = make_nuclei_stack((5, 128, 128), seed=3)
    ids, counts = np.unique(truth[2][truth[2] > 0], return_counts=True)
    oid = ids[np.argmax(counts)]
    masks = propagate_object(truth[2] == oid, 2, 5, predictor=predictor,
                             prepare_slice=lambda z: predictor.set_image(stack[z]), iou_threshold=0.1)
    b = bands("builtin")
    b.check("propagation_n_slices", len(masks))
    b.check("propagation_min_iou", min((mask_iou(m, truth[z] == oid) for z, m in masks.items()), default=0.0))
