"""normalize: contrast limits and conversion to SAM's RGB uint8, against hand references."""

from __future__ import annotations

from fractions import Fraction

import dask.array as da
import numpy as np
import pytest

from napari_sam.normalize import estimate_contrast_limits, to_rgb_uint8


def _reference_stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Exact rational arithmetic, round half to even, clip: the documented rule."""
    out = []
    for v in values.ravel().tolist():
        scaled = (Fraction(v) - Fraction(low)) * 255 / (Fraction(high) - Fraction(low))
        out.append(min(255, max(0, round(scaled))))
    return np.array(out, dtype=np.uint8).reshape(values.shape)


class CountingArray:
    """Array-like that records every read, to prove chunked input is not read in full."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads = 0

    def __getitem__(self, key):
        out = self.data[key]
        self.reads += out.size > 0  # dask also reads an empty slice for its metadata
        return out


# ------------------------------------------------------------ contrast limits
@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int16, np.uint8])
def test_limits_equal_numpy_percentile_on_small_grayscale(dtype):
    rng = np.random.default_rng(1)
    image = (rng.normal(100, 30, size=(60, 70))).astype(dtype)
    limits = estimate_contrast_limits(image, percentiles=(2, 98))
    expected = np.percentile(image.astype(np.float64), [2, 98])
    assert limits.shape == (1, 2) and limits.dtype == np.float64
    np.testing.assert_allclose(limits[0], expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("layout", ["yxc", "cyx"])
def test_limits_per_channel_and_channel_selection(layout):
    rng = np.random.default_rng(2)
    yxc = rng.gamma(2.0, [1.0, 10.0, 100.0, 1000.0, 5.0], size=(40, 50, 5))
    image, axis = (yxc, -1) if layout == "yxc" else (np.moveaxis(yxc, -1, 0).copy(), 0)
    limits = estimate_contrast_limits(image, channel_axis=axis, channels=(3, 0, 4))
    expected = np.array([np.percentile(yxc[..., c], [0.5, 99.5]) for c in (3, 0, 4)])
    np.testing.assert_allclose(limits, expected, rtol=1e-12)


def test_limits_sampled_when_large_are_deterministic_and_close():
    rng = np.random.default_rng(3)
    image = rng.random((1000, 1200), dtype=np.float32)
    a = estimate_contrast_limits(image, max_samples=50_000, seed=7)
    b = estimate_contrast_limits(image, max_samples=50_000, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a[0], np.percentile(image, [0.5, 99.5]), atol=0.003)


def test_limits_of_dask_input_read_only_some_chunks():
    rng = np.random.default_rng(4)
    source = CountingArray(rng.random((2048, 2048), dtype=np.float32))
    image = da.from_array(source, chunks=(64, 64), asarray=False)  # 1024 chunks
    limits = estimate_contrast_limits(image, max_samples=20_000)
    assert 0 < source.reads <= 64, f"read {source.reads} of 1024 chunks"
    np.testing.assert_allclose(limits[0], [0.005, 0.995], atol=0.01)


def test_limits_of_dask_input_with_a_huge_graph():
    # 10**4 chunks (a 10**10-pixel image): only a few may ever be built.
    image = da.ones((100_000, 100_000), dtype=np.uint8, chunks=(1000, 1000))
    np.testing.assert_array_equal(estimate_contrast_limits(image, max_samples=1000), [[1, 1]])


def test_small_dask_input_is_used_whole():
    rng = np.random.default_rng(5)
    data = rng.random((100, 90, 3))
    image = da.from_array(data, chunks=(30, 40, 2))
    limits = estimate_contrast_limits(image, channel_axis=-1)
    expected = np.percentile(data.reshape(-1, 3), [0.5, 99.5], axis=0).T
    np.testing.assert_allclose(limits, expected, rtol=1e-12)


def test_limits_of_zarr_array():
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(6)
    data = rng.integers(0, 4000, size=(128, 96), dtype=np.uint16)
    z = zarr.create_array(store={}, shape=data.shape, chunks=(32, 32), dtype=data.dtype)
    z[...] = data
    np.testing.assert_allclose(estimate_contrast_limits(z)[0], np.percentile(data, [0.5, 99.5]))


def test_limits_of_bool_image():
    np.testing.assert_array_equal(estimate_contrast_limits(np.eye(5, dtype=bool)), [[0.0, 1.0]])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_values_are_rejected(bad):
    image = np.ones((10, 10), dtype=np.float32)
    image[3, 4] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        estimate_contrast_limits(image)
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_rgb_uint8(image)


def test_bad_percentiles_and_max_samples():
    image = np.zeros((4, 4))
    with pytest.raises(ValueError, match="percentiles"):
        estimate_contrast_limits(image, percentiles=(99, 1))
    with pytest.raises(ValueError, match="max_samples"):
        estimate_contrast_limits(image, max_samples=0)


# ---------------------------------------------------------------- to_rgb_uint8
def test_uint8_rgb_passes_through_unchanged_and_is_a_copy():
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(33, 41, 3), dtype=np.uint8)
    before = image.copy()
    rgb = to_rgb_uint8(image, channel_axis=-1)
    np.testing.assert_array_equal(rgb, image)
    assert rgb.dtype == np.uint8 and not np.shares_memory(rgb, image)
    np.testing.assert_array_equal(to_rgb_uint8(image), image)  # (Y, X, 3) needs no channel_axis
    cyx = np.ascontiguousarray(np.moveaxis(image, -1, 0))
    np.testing.assert_array_equal(to_rgb_uint8(cyx, channel_axis=0), image)
    np.testing.assert_array_equal(image, before)


def test_uint16_ramp_maps_exactly():
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0, 257, ..., 65535
    rgb = to_rgb_uint8(ramp, contrast_limits=(0, 65535))
    np.testing.assert_array_equal(rgb[..., 0], np.arange(256).reshape(16, 16))
    np.testing.assert_array_equal(rgb[..., 1], rgb[..., 0])
    np.testing.assert_array_equal(rgb[..., 2], rgb[..., 0])


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64, np.uint8])
def test_stretch_matches_exact_rational_reference(dtype):
    rng = np.random.default_rng(8)
    image = rng.integers(-200, 60000, size=(17, 19)).astype(dtype)
    low, high = 1234.0, 43210.5
    rgb = to_rgb_uint8(image, contrast_limits=(low, high))
    np.testing.assert_array_equal(rgb[..., 0], _reference_stretch(image, low, high))


def test_estimated_limits_are_used_by_default():
    rng = np.random.default_rng(9)
    image = rng.normal(size=(30, 30)).astype(np.float32)
    low, high = np.percentile(image.astype(np.float64), [0.5, 99.5])
    np.testing.assert_array_equal(to_rgb_uint8(image)[..., 0], _reference_stretch(image, low, high))


def test_channel_mappings():
    rng = np.random.default_rng(10)
    bands = rng.integers(0, 1000, size=(12, 14, 6)).astype(np.uint16)
    limits = [(0, 999), (10, 900), (50, 800)]
    two = to_rgb_uint8(bands, channel_axis=-1, channels=(4, 1), contrast_limits=limits[:2])
    np.testing.assert_array_equal(two[..., 0], _reference_stretch(bands[..., 4], 0, 999))
    np.testing.assert_array_equal(two[..., 1], _reference_stretch(bands[..., 1], 10, 900))
    np.testing.assert_array_equal(two[..., 2], 0)
    three = to_rgb_uint8(bands, channel_axis=-1, channels=(5, 0, 2), contrast_limits=limits)
    for out_c, (band, (lo, hi)) in enumerate(zip((5, 0, 2), limits)):
        np.testing.assert_array_equal(three[..., out_c], _reference_stretch(bands[..., band], lo, hi))
    one = to_rgb_uint8(bands, channel_axis=-1, channels=[3], contrast_limits=(0, 999))
    np.testing.assert_array_equal(one, np.repeat(_reference_stretch(bands[..., 3], 0, 999)[..., None], 3, -1))


def test_bool_maps_to_0_and_255():
    mask = np.zeros((5, 6), dtype=bool)
    mask[1:3, 2:5] = True
    rgb = to_rgb_uint8(mask)
    np.testing.assert_array_equal(rgb, np.repeat((mask * 255).astype(np.uint8)[..., None], 3, -1))


def test_constant_image_does_not_divide_by_zero():
    rgb = to_rgb_uint8(np.full((4, 4), 7.0))
    np.testing.assert_array_equal(rgb, 0)
    np.testing.assert_array_equal(to_rgb_uint8(np.array([[1.0, 2.0]]), contrast_limits=(1, 1))[..., 0], [[0, 255]])


def test_dask_tile_with_given_limits_equals_numpy():
    rng = np.random.default_rng(11)
    data = rng.integers(0, 5000, size=(40, 30), dtype=np.uint16)
    limits = estimate_contrast_limits(data)
    np.testing.assert_array_equal(
        to_rgb_uint8(da.from_array(data, chunks=16), contrast_limits=limits),
        to_rgb_uint8(data, contrast_limits=limits),
    )


def test_input_is_never_modified():
    rng = np.random.default_rng(12)
    image = rng.normal(size=(20, 20, 4)).astype(np.float32)
    before = image.copy()
    to_rgb_uint8(image, channel_axis=-1, channels=(0, 1, 2))
    estimate_contrast_limits(image, channel_axis=2, channels=(3,))
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.zeros((8, 8, 5)), {"channel_axis": -1}, "channels="),
        (np.zeros((8, 8, 4)), {"channel_axis": -1, "channels": (0, 1, 2, 3)}, "one to three"),
        (np.zeros((8, 8, 4)), {"channel_axis": -1, "channels": (0, 4)}, "out of range"),
        (np.zeros((8, 8, 4)), {"channel_axis": -1, "channels": (0.0,)}, "integer"),
        (np.zeros((5, 8, 8)), {}, "channel_axis"),
        (np.zeros((3, 8, 3)), {}, "channel_axis"),
        (np.zeros((8, 8, 4), dtype=np.uint8), {}, r"RGBA: channel_axis=-1, channels=\(0, 1, 2\)"),
        (np.zeros((8, 8)), {"channel_axis": 0}, "2-D"),
        (np.zeros((8, 8, 3)), {"channel_axis": 3}, "out of range"),
        (np.zeros((2, 8, 8, 3)), {"channel_axis": -1}, "one plane"),
        (np.zeros((8,)), {}, "2-D image"),
        (np.zeros((0, 8)), {}, "empty"),
        (np.zeros((4, 4), dtype=complex), {}, "complex"),
        (np.array([["a", "b"]]), {}, "dtype"),
        (np.zeros((8, 8)), {"channels": (1,)}, "single channel"),
    ],
)
def test_bad_images_raise_actionable_errors(image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        to_rgb_uint8(image, **kwargs)
    with pytest.raises(ValueError, match=message):
        estimate_contrast_limits(image, **kwargs)


@pytest.mark.parametrize(
    ("limits", "message"),
    [((1, 2, 3), r"shape \(2,\) or \(3, 2\)"), ((5, 1), "low <= high"), ((0, np.nan), "finite")],
)
def test_bad_contrast_limits(limits, message):
    with pytest.raises(ValueError, match=message):
        to_rgb_uint8(np.zeros((4, 4, 3), dtype=np.uint16), channel_axis=-1, contrast_limits=limits)
