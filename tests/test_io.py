"""caffe.io: pycaffe's conversions, Transformer, load_image, resize_image and oversample."""

import numpy as np
import pytest

import caffe.io
from caffe.errors import CaffeError
from caffe.proto import caffe_pb2

from tolerance import sum_order_atol

RNG = np.random.default_rng(0)


def test_array_blobproto_round_trip_with_diff():
    arr = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    diff = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    blob = caffe.io.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), arr)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), diff)
    # Through bytes too.
    again = caffe_pb2.BlobProto.FromString(blob.SerializeToString())
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(again), arr)


def test_blobproto_legacy_shape():
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=range(6))
    arr = caffe.io.blobproto_to_array(blob)
    assert arr.shape == (1, 2, 1, 3)
    np.testing.assert_array_equal(arr.ravel(), np.arange(6))


def test_arraylist_blobprotovector_string_round_trip():
    arrays = [RNG.normal(size=(3,)).astype(np.float32), np.arange(12.0).reshape(2, 2, 3)]
    text = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(text, bytes)
    back = caffe.io.blobprotovector_str_to_arraylist(text)
    assert len(back) == 2
    for a, b in zip(arrays, back):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_array_datum_round_trip_uint8_and_float():
    img = RNG.integers(0, 256, size=(3, 5, 4), dtype=np.uint8)
    datum = caffe.io.array_to_datum(img, label=6)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 5, 4, 6)
    assert datum.data == img.tobytes() and not len(datum.float_data)
    back = caffe.io.datum_to_array(caffe_pb2.Datum.FromString(datum.SerializeToString()))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, img)
    floats = RNG.normal(size=(2, 2, 2)).astype(np.float32)
    datum = caffe.io.array_to_datum(floats)
    assert not datum.data and len(datum.float_data) == 8 and not datum.HasField("label")
    np.testing.assert_array_equal(caffe.io.datum_to_array(datum), floats)
    with pytest.raises(ValueError, match="Incorrect array shape."):
        caffe.io.array_to_datum(np.zeros((2, 2)))


def _transformer():
    t = caffe.io.Transformer({"data": (1, 3, 6, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_transformer_preprocess_formula_and_deprocess_inverse():
    t = _transformer()
    img = RNG.uniform(0, 1, size=(6, 5, 3)).astype(np.float32)
    original = img.copy()
    out = t.preprocess("data", img)
    np.testing.assert_array_equal(img, original)  # the caller's image is untouched
    expected = ((img.transpose(2, 0, 1)[[2, 1, 0]] * np.float32(255.0)
                 - np.array([104.0, 117.0, 123.0])[:, None, None].astype(np.float32))
                * np.float32(0.5))
    assert out.dtype == np.float32 and out.shape == (3, 6, 5)
    # float32 (x * 255 - mean) * 0.5 cancels near zero: two roundings of size <= 255 + 123
    # (tolerance.py), halved; deprocess undoes it in three more, scaled back by 1 / 255.
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=0.5 * sum_order_atol(3, 255 + 123))
    np.testing.assert_allclose(t.deprocess("data", out[None]), img, rtol=1e-5,
                               atol=sum_order_atol(6, (255 + 123) / 255))


def test_transformer_resizes_to_input_and_elementwise_mean():
    t = caffe.io.Transformer({"data": (1, 3, 4, 4)})
    t.set_transpose("data", (2, 0, 1))
    mean = RNG.uniform(size=(3, 4, 4))
    t.set_mean("data", mean)
    img = np.full((8, 8, 3), 0.5, np.float32)
    out = t.preprocess("data", img)
    # The mean is rounded to float32, then subtracted: 0.5 - mean cancels near zero.
    np.testing.assert_allclose(out, 0.5 - mean, rtol=1e-6, atol=sum_order_atol(2, 0.5 + mean))
    # A mean of another size is resized to the input size.
    t.set_mean("data", np.ones((3, 8, 8)) * np.arange(1, 4)[:, None, None])
    assert t.mean["data"].shape == (3, 4, 4)


def test_transformer_checks_and_messages():
    t = caffe.io.Transformer({"data": (1, 3, 4, 4)})
    with pytest.raises(CaffeError, match="img is not one of the net inputs"):
        t.preprocess("img", np.zeros((4, 4, 3)))
    with pytest.raises(CaffeError, match="Transpose order needs to have the same number"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(CaffeError, match="Channel swap needs to have the same number"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels incompatible with input."):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t.set_mean("data", np.zeros((1, 3, 4, 4)))


def test_load_image_color_gray_and_alpha(tmp_path):
    from PIL import Image

    rgb = RNG.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    img = caffe.io.load_image(str(tmp_path / "c.png"))
    assert img.dtype == np.float32 and img.shape == (5, 4, 3)
    np.testing.assert_allclose(img, rgb / 255.0, rtol=1e-6)
    gray = caffe.io.load_image(str(tmp_path / "c.png"), color=False)
    assert gray.shape == (5, 4, 1)
    np.testing.assert_allclose(gray[:, :, 0], (rgb / 255.0) @ [0.2125, 0.7154, 0.0721],
                               rtol=1e-5)
    g = RNG.integers(0, 256, size=(3, 2), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    tiled = caffe.io.load_image(str(tmp_path / "g.png"))
    assert tiled.shape == (3, 2, 3)
    for c in range(3):
        np.testing.assert_allclose(tiled[:, :, c], g / 255.0, rtol=1e-6)
    assert caffe.io.load_image(str(tmp_path / "g.png"), color=False).shape == (3, 2, 1)
    rgba = RNG.integers(0, 256, size=(2, 2, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "a.png")),
                               rgba[:, :, :3] / 255.0, rtol=1e-6)


def test_resize_image_bilinear_on_half_pixel_grid():
    im = np.arange(4, dtype=np.float32).reshape(2, 2, 1)
    up = caffe.io.resize_image(im, (4, 4))
    assert up.shape == (4, 4, 1) and up.dtype == np.float32
    # Half-pixel centres: output row 1 samples input row 0.25 -> 0.25 * 2 (row step) ...
    np.testing.assert_allclose(up[:, :, 0], [[0, 0.25, 0.75, 1], [0.5, 0.75, 1.25, 1.5],
                                             [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]])
    const = caffe.io.resize_image(np.full((3, 3, 3), 0.7, np.float32), (5, 2))
    assert const.shape == (5, 2, 3) and np.all(const == np.float32(0.7))
    many = caffe.io.resize_image(RNG.normal(size=(4, 4, 5)), (8, 6), interp_order=3)
    assert many.shape == (8, 6, 5)
    near = caffe.io.resize_image(im, (4, 4), interp_order=0)
    np.testing.assert_array_equal(near[:, :, 0], np.repeat(np.repeat([[0, 1], [2, 3]], 2, 0),
                                                           2, 1))


def test_oversample_order_is_corners_centre_then_mirrors():
    im = np.arange(6 * 7, dtype=np.float32).reshape(6, 7, 1)
    crops = caffe.io.oversample([im, im + 100], (3, 4))
    assert crops.shape == (20, 3, 4, 1)
    expected = [im[0:3, 0:4], im[0:3, 3:7], im[3:6, 0:4], im[3:6, 3:7], im[1:4, 1:5]]
    for i, e in enumerate(expected):
        np.testing.assert_array_equal(crops[i], e)
        np.testing.assert_array_equal(crops[5 + i], e[:, ::-1])
        np.testing.assert_array_equal(crops[10 + i], e + 100)
