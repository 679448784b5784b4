"""DataTransformer: Caffe's crop/mirror/mean/scale math vs an independent numpy computation."""

import numpy as np
import pytest
from google.protobuf import text_format

from caffe import common
from caffe.data import image as cvimage
from caffe.data.datum import encoded_datum, image_to_datum
from caffe.data.transformer import DataTransformer, load_mean_file
from caffe.errors import DataError
from caffe.io import array_to_blobproto
from caffe.proto import caffe_pb2

RNG = np.random.default_rng(7)
IMG = RNG.integers(0, 256, size=(3, 9, 8), dtype=np.uint8)
MEAN = RNG.uniform(0, 255, size=(1, 3, 9, 8)).astype(np.float32)


@pytest.fixture
def mean_file(tmp_path):
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(array_to_blobproto(MEAN).SerializeToString())
    return str(path)


def make(text: str, phase=caffe_pb2.TEST, dtype=np.float32) -> DataTransformer:
    param = text_format.Parse(text, caffe_pb2.TransformationParameter())
    t = DataTransformer(param, phase, dtype)
    t.init_rand()
    return t


def expected(img, *, crop=0, h_off=0, w_off=0, mirror=False, mean=None, mean_values=None,
             scale=1.0, dtype=np.float32):
    """Caffe's formula element by element, via explicit source indices."""
    c, height, width = img.shape
    h, w = (crop, crop) if crop else (height, width)
    cc, hh, ww = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    src_h = h_off + hh
    src_w = w_off + ((w - 1 - ww) if mirror else ww)
    x = img[cc, src_h, src_w].astype(dtype)
    if mean is not None:
        x = x - mean[cc, src_h, src_w].astype(dtype)
    elif mean_values is not None:
        mv = np.asarray(mean_values, dtype=np.float32).astype(dtype)
        x = x - (mv[cc] if mv.size > 1 else mv[0])
    return (x * dtype(scale)).astype(dtype)


CASES = [
    ("", {}),
    ("scale: 0.125", dict(scale=0.125)),
    ("mean_value: 100", dict(mean_values=[100])),
    ("mean_value: 10 mean_value: 20.5 mean_value: 30", dict(mean_values=[10, 20.5, 30])),
    ("mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5",
     dict(mean_values=[10, 20, 30], scale=0.5)),
    ("crop_size: 5", dict(crop=5, h_off=2, w_off=1)),
    ("crop_size: 4 mean_value: 3", dict(crop=4, h_off=2, w_off=2, mean_values=[3])),
    ("crop_size: 8", dict(crop=8, h_off=0, w_off=0)),
]


@pytest.mark.parametrize("text,kw", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_test_phase_matches_formula(text, kw, dtype):
    t = make(text, dtype=dtype)
    out = t.transform(IMG)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected(IMG, dtype=dtype, **kw))


@pytest.mark.parametrize("crop", [0, 5])
def test_mean_file_is_subtracted_at_the_cropped_position_then_scaled(mean_file, crop):
    t = make(f"mean_file: '{mean_file}' scale: 0.25 crop_size: {crop}")
    off = ((9 - crop) // 2, (8 - crop) // 2) if crop else (0, 0)
    np.testing.assert_array_equal(
        t.transform(IMG),
        expected(IMG, crop=crop, h_off=off[0], w_off=off[1], mean=MEAN[0], scale=0.25))


def test_mirror_uses_source_position_for_the_mean(mean_file):
    # With mirror on, TEST still draws the coin; find one mirrored draw and check it.
    common.set_random_seed(3)
    t = make(f"mirror: true crop_size: 5 mean_file: '{mean_file}' scale: 2")
    draws = [t.draw(9, 8) for _ in range(20)]
    assert {d[0] for d in draws} == {True, False}
    assert {d[1:] for d in draws} == {(2, 1)}  # TEST: centre crop even when mirroring
    for draw in draws[:4]:
        out = t.transform(IMG, draw=draw)
        np.testing.assert_array_equal(out, expected(IMG, crop=5, h_off=2, w_off=1,
                                                    mirror=draw[0], mean=MEAN[0], scale=2))


def test_test_phase_is_deterministic():
    t = make("crop_size: 6 mean_value: 50 scale: 0.5")
    assert t.rng is None  # nothing random to draw
    first = t.transform(IMG)
    for _ in range(3):
        np.testing.assert_array_equal(t.transform(IMG), first)


def test_train_crops_and_mirrors_repeat_under_set_random_seed():
    def run(seed):
        common.set_random_seed(seed)
        t = make("crop_size: 4 mirror: true", phase=caffe_pb2.TRAIN)
        return [t.draw(9, 8) for _ in range(200)], [t.transform(IMG) for _ in range(5)]

    draws_a, outs_a = run(11)
    draws_b, outs_b = run(11)
    draws_c, _ = run(12)
    assert draws_a == draws_b and draws_a != draws_c
    for a, b in zip(outs_a, outs_b):
        np.testing.assert_array_equal(a, b)
    # Offsets cover the whole range [0, H-crop] x [0, W-crop]; both mirror states occur.
    assert {d[1] for d in draws_a} == set(range(6)) and {d[2] for d in draws_a} == set(range(5))
    assert {d[0] for d in draws_a} == {True, False}
    # Each TRAIN output is the formula at the offsets drawn (replayed under the same seed).
    common.set_random_seed(5)
    t = make("crop_size: 4 mirror: true mean_value: 1", phase=caffe_pb2.TRAIN)
    replay = [t.draw(9, 8) for _ in range(5)]
    common.set_random_seed(5)
    t = make("crop_size: 4 mirror: true mean_value: 1", phase=caffe_pb2.TRAIN)
    for m, h, w in replay:
        np.testing.assert_array_equal(
            t.transform(IMG), expected(IMG, crop=4, h_off=h, w_off=w, mirror=m,
                                       mean_values=[1]))


def test_float_data_datum():
    values = RNG.normal(size=(2, 5, 4)).astype(np.float32)
    datum = caffe_pb2.Datum(channels=2, height=5, width=4, float_data=values.ravel())
    t = make("scale: 3 mean_value: 0.5 crop_size: 3")
    np.testing.assert_array_equal(t.transform_datum(datum),
                                  expected(values, crop=3, h_off=1, w_off=0, mean_values=[0.5],
                                           scale=3))


def test_encoded_png_datum_decodes_to_bgr_planar():
    hwc = np.ascontiguousarray(IMG.transpose(1, 2, 0))  # BGR interleaved
    datum = encoded_datum(hwc, "png", label=3)
    assert datum.encoded
    # Independent decode with Pillow (RGB) flipped to BGR.
    from io import BytesIO

    from PIL import Image

    rgb = np.asarray(Image.open(BytesIO(datum.data)).convert("RGB"))
    bgr_chw = rgb[:, :, ::-1].transpose(2, 0, 1)
    np.testing.assert_array_equal(bgr_chw, IMG)
    t = make("crop_size: 5 mean_value: 7")
    np.testing.assert_array_equal(t.transform_datum(datum),
                                  expected(IMG, crop=5, h_off=2, w_off=1, mean_values=[7]))
    assert t.infer_blob_shape(t.decode(datum)) == [1, 3, 5, 5]


def test_force_color_and_force_gray():
    gray = IMG[0]
    gray_datum = encoded_datum(gray, "png")
    assert make("").decode(gray_datum).shape == (1, 9, 8)
    color = make("force_color: true").decode(gray_datum)
    assert color.shape == (3, 9, 8)
    for c in range(3):
        np.testing.assert_array_equal(color[c], gray)
    color_datum = encoded_datum(np.ascontiguousarray(IMG.transpose(1, 2, 0)), "png")
    forced = make("force_gray: true").decode(color_datum)
    assert forced.shape == (1, 9, 8)
    b, g, r = IMG.astype(np.float64)
    luma = 0.114 * b + 0.587 * g + 0.299 * r
    assert np.abs(forced[0] - luma).max() <= 1.0
    with pytest.raises(DataError, match="force_color and force_gray"):
        make("force_color: true force_gray: true")


def test_transform_blob_applies_one_draw_to_the_whole_batch(mean_file):
    batch = RNG.integers(0, 256, size=(4, 3, 9, 8)).astype(np.float32)
    t = make(f"crop_size: 5 mean_file: '{mean_file}' scale: 0.5")
    out = t.transform_blob(batch)
    assert out.shape == (4, 3, 5, 5)
    for i in range(4):
        np.testing.assert_array_equal(out[i], expected(batch[i], crop=5, h_off=2, w_off=1,
                                                       mean=MEAN[0], scale=0.5))


def test_transform_batch_and_infer_shape():
    images = RNG.integers(0, 256, size=(3, 3, 9, 8), dtype=np.uint8)
    t = make("crop_size: 6")
    out = np.zeros((4, 3, 6, 6), np.float32)
    t.transform_batch(list(images), out)
    for i in range(3):
        np.testing.assert_array_equal(out[i], expected(images[i], crop=6, h_off=1, w_off=1))
    assert not out[3].any()
    assert make("").infer_blob_shape(IMG) == [1, 3, 9, 8]


def test_checks_and_messages(mean_file, tmp_path):
    with pytest.raises(DataError, match="Cannot specify mean_file and mean_value"):
        make(f"mean_file: '{mean_file}' mean_value: 1")
    with pytest.raises(DataError, match="missing.binaryproto"):
        make(f"mean_file: '{tmp_path / 'missing.binaryproto'}'")
    with pytest.raises(DataError, match="Specify either 1 mean_value or as many as channels: 3"):
        make("mean_value: 1 mean_value: 2").transform(IMG)
    with pytest.raises(DataError, match="crop_size 10 is larger than the 9x8"):
        make("crop_size: 10").transform(IMG)
    with pytest.raises(DataError, match=r"mean_file blob shape \[3, 9, 8\] does not match"):
        make(f"mean_file: '{mean_file}'").transform(IMG[:, :8])
    with pytest.raises(DataError, match="batch holds"):
        make("").transform(IMG, out=np.empty((3, 5, 5), np.float32))


def test_load_mean_file_reads_legacy_and_shaped_blobs(tmp_path):
    legacy = caffe_pb2.BlobProto(num=1, channels=3, height=9, width=8, data=MEAN.ravel())
    (tmp_path / "a").write_bytes(legacy.SerializeToString())
    np.testing.assert_array_equal(load_mean_file(str(tmp_path / "a")), MEAN[0])
    (tmp_path / "b").write_bytes(b"\xff\xff\xff")
    with pytest.raises(DataError, match="not a BlobProto"):
        load_mean_file(str(tmp_path / "b"))


def test_raw_datum_round_trip_through_transformer():
    datum = image_to_datum(IMG, 4)
    np.testing.assert_array_equal(make("").transform_datum(datum), IMG.astype(np.float32))
    bad = caffe_pb2.Datum(channels=3, height=9, width=8, data=b"\x00" * 10)
    with pytest.raises(ValueError, match="expected channels"):
        make("").transform_datum(bad)


@pytest.mark.skipif(not cvimage.has_opencv(), reason="OpenCV not installed")
def test_pillow_fallback_decodes_like_opencv(monkeypatch):
    hwc = np.ascontiguousarray(IMG.transpose(1, 2, 0))
    png = cvimage.imencode(hwc, "png")
    with_cv = [cvimage.imdecode(png, f) for f in (-1, 1)]
    monkeypatch.setattr(cvimage, "cv2", None)
    without = [cvimage.imdecode(png, f) for f in (-1, 1)]
    for a, b in zip(with_cv, without):
        np.testing.assert_array_equal(a, b)
    # Pillow's encoder round-trips too.
    np.testing.assert_array_equal(cvimage.imdecode(cvimage.imencode(hwc, "png"), 1), hwc)


@pytest.mark.skipif(not cvimage.has_opencv(), reason="OpenCV not installed")
@pytest.mark.parametrize("size", [(13, 11), (4, 5)])
def test_torch_resize_fallback_is_within_one_level_of_opencv(monkeypatch, size):
    hwc = np.ascontiguousarray(IMG.transpose(1, 2, 0))
    reference = cvimage.resize(hwc, *size)
    monkeypatch.setattr(cvimage, "cv2", None)
    ours = cvimage.resize(hwc, *size)
    assert ours.shape == reference.shape == (size[1], size[0], 3)
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1
