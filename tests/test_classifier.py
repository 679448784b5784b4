"""Classifier and Detector: preprocessing, crops (oversampled, center, windows with context) and
predictions, checked against the same computation written out with numpy."""

from __future__ import annotations

import numpy as np
import pytest

import caffe
import caffe.io
from caffe.classifier import Classifier
from caffe.detector import Detector
from caffe.errors import CaffeError
from caffe.net_spec import NetSpec
from caffe.net_spec import layers as L

from tolerance import sum_order_atol

NUM_CLASSES = 5
MEAN = np.array([10.0, 20.0, 30.0], dtype=np.float32)
SWAP = (2, 1, 0)


@pytest.fixture(autouse=True)
def _layers_available():
    missing = {"Input", "InnerProduct"} - set(caffe.layer_type_list())
    if missing:
        pytest.skip(f"layers not yet available: {sorted(missing)}")


def make_model(tmp_path, size: int, batch: int = 2):
    """A linear classifier over a batch x 3 x size x size input, with random saved weights.
    Returns (prototxt path, caffemodel path, W, b)."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[batch, 3, size, size]))
    n.score = L.InnerProduct(n.data, num_output=NUM_CLASSES)
    proto = n.to_proto()
    proto.name = "Linear"
    model = tmp_path / "linear.prototxt"
    model.write_text(str(proto))
    net = caffe.Net(str(model), caffe.TEST)
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((NUM_CLASSES, 3 * size * size)).astype(np.float32)
    bias = rng.standard_normal(NUM_CLASSES).astype(np.float32)
    net.params["score"][0].data[...] = weights
    net.params["score"][1].data[...] = bias
    caffemodel = tmp_path / "linear.caffemodel"
    net.save(str(caffemodel))
    return str(model), str(caffemodel), weights, bias


def preprocess(crop: np.ndarray, raw_scale: float, input_scale: float) -> np.ndarray:
    """H x W x 3 raw crop -> 3 x H x W net input: transpose, RGB->BGR, raw scale, mean, scale."""
    x = crop.transpose(2, 0, 1)[list(SWAP)] * raw_scale
    return (x - MEAN[:, None, None]) * input_scale


def linear(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return weights.astype(np.float64) @ x.reshape(-1) + bias


def score_atol(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> float:
    """How far the net's float32 scores may be from :func:`linear`'s float64 ones: a sum of
    k = x.size products and the bias, one rounding per product and one of the net's float32
    input, in another order (tolerance.py). Scores are ~1e3, with some near zero."""
    abs_sum = np.abs(weights.astype(np.float64)) @ np.abs(x.reshape(-1)) + np.abs(bias)
    return sum_order_atol(x.size + 3, abs_sum)


def test_classifier_center_crop(tmp_path):
    model, weights_file, W, b = make_model(tmp_path, size=4)
    clf = Classifier(model, weights_file, image_dims=(6, 6), mean=MEAN, raw_scale=255.0,
                        input_scale=0.5, channel_swap=SWAP)
    rng = np.random.default_rng(1)
    images = [rng.random((6, 6, 3), dtype=np.float32) for _ in range(3)]
    scores = clf.predict(images, oversample=False)
    assert scores.shape == (3, NUM_CLASSES)
    for image, got in zip(images, scores):
        x = preprocess(image[1:5, 1:5], 255.0, 0.5)
        np.testing.assert_allclose(got, linear(x, W, b), rtol=1e-4, atol=score_atol(x, W, b))


def test_classifier_oversample_averages_ten_crops(tmp_path):
    model, weights_file, W, b = make_model(tmp_path, size=4)
    clf = Classifier(model, weights_file, image_dims=(6, 6), mean=MEAN, raw_scale=255.0,
                        channel_swap=SWAP)
    rng = np.random.default_rng(2)
    images = [rng.random((6, 6, 3), dtype=np.float32) for _ in range(2)]
    scores = clf.predict(images)
    assert scores.shape == (2, NUM_CLASSES)
    for image, got in zip(images, scores):
        crops = [image[y:y + 4, x:x + 4] for y, x in ((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))]
        crops += [c[:, ::-1] for c in crops]
        xs = [preprocess(c, 255.0, 1.0) for c in crops]
        each = np.array([linear(x, W, b) for x in xs])
        # Each crop's score, then their float32 mean of 10 (tolerance.py).
        atol = max(score_atol(x, W, b) for x in xs) + sum_order_atol(10, np.abs(each).mean(0))
        np.testing.assert_allclose(got, each.mean(0), rtol=1e-4, atol=atol)
    # The mirrored crops count: scores differ from the five unmirrored crops alone.
    unmirrored = np.mean([linear(preprocess(images[0][y:y + 4, x:x + 4], 255.0, 1.0), W, b)
                          for y, x in ((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))], axis=0)
    assert not np.allclose(scores[0], unmirrored, atol=1e-3)


def test_classifier_resizes_to_image_dims(tmp_path):
    model, weights_file, W, b = make_model(tmp_path, size=4)
    clf = Classifier(model, weights_file)  # image_dims default: the input size, one crop
    assert list(clf.image_dims) == [4, 4] and list(clf.crop_dims) == [4, 4]
    image = np.random.default_rng(3).random((9, 7, 3), dtype=np.float32)
    got = clf.predict([image], oversample=False)[0]
    resized = caffe.io.resize_image(image, (4, 4))
    x = resized.transpose(2, 0, 1)
    np.testing.assert_allclose(got, linear(x, W, b), rtol=1e-4, atol=score_atol(x, W, b))
    with pytest.raises(CaffeError, match="smaller than the net's input size"):
        Classifier(model, weights_file, image_dims=(3, 3))


def test_detector_windows(tmp_path):
    model, weights_file, W, b = make_model(tmp_path, size=4)
    det = Detector(model, weights_file, mean=MEAN, raw_scale=255.0, channel_swap=SWAP)
    assert list(det.crop_dims) == [4, 4, 3]
    rng = np.random.default_rng(4)
    image = rng.random((10, 12, 3), dtype=np.float32)
    other = rng.random((5, 5, 3), dtype=np.float32)
    windows = [np.array([0, 0, 4, 4]), np.array([3, 5, 7, 9]), np.array([2, 0, 10, 8])]
    detections = det.detect_windows([(image, windows), (other, [(1, 1, 5, 5)])])
    assert len(detections) == 4
    assert [list(d["window"]) for d in detections] == [[0, 0, 4, 4], [3, 5, 7, 9], [2, 0, 10, 8],
                                                      [1, 1, 5, 5]]
    crops = [image[0:4, 0:4], image[3:7, 5:9],
             caffe.io.resize_image(image[2:10, 0:8], (4, 4)), other[1:5, 1:5]]
    for detection, crop in zip(detections, crops):
        x = preprocess(crop, 255.0, 1.0)
        np.testing.assert_allclose(detection["prediction"], linear(x, W, b), rtol=1e-4,
                                   atol=score_atol(x, W, b))
        assert detection["filename"] is None
    with pytest.raises(CaffeError, match="empty or outside"):
        det.detect_windows([(image, [(0, 0, 11, 4)])])


def test_detector_reads_image_files(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    model, weights_file, W, b = make_model(tmp_path, size=4)
    det = Detector(model, weights_file)
    pixels = (np.arange(6 * 6 * 3) * 7 % 256).astype(np.uint8).reshape(6, 6, 3)
    path = tmp_path / "im.png"
    Image.fromarray(pixels).save(path)
    (detection,) = det.detect([(str(path), [(1, 2, 5, 6)])], crop_mode="list")
    assert detection["filename"] == str(path)
    x = (pixels[1:5, 2:6].astype(np.float32) / 255.0).transpose(2, 0, 1)
    np.testing.assert_allclose(detection["prediction"], linear(x, W, b), rtol=1e-4,
                               atol=score_atol(x, W, b))


def test_detector_context_padding(tmp_path):
    model, weights_file, W, b = make_model(tmp_path, size=8)
    det = Detector(model, weights_file, mean=MEAN, raw_scale=255.0, channel_swap=SWAP,
                      context_pad=2)
    # The mean, back in raw RGB space in [0, 1].
    np.testing.assert_allclose(det.crop_mean.reshape(-1), [30 / 255, 20 / 255, 10 / 255])
    image = np.random.default_rng(5).random((12, 12, 3), dtype=np.float32)
    # Inside: the 4x4 window (inclusive box 4..7) doubled around its center is rows 2..10,
    # 9 pixels warped onto 8: round(9 * 8 / 9) = 8, no padding.
    # (atol: a few float32 roundings of interpolation weights times pixels below 1)
    np.testing.assert_allclose(det.crop(image, np.array([4, 4, 7, 7])), image[2:10, 2:10],
                               atol=1e-6)
    # At the corner the doubled box starts at -2: round(2 * 8 / 9) = 2 rows and columns of mean,
    # then the 7 clipped pixels (0..6) warped to round(7 * 8 / 9) = 6.
    crop = det.crop(image, np.array([0, 0, 3, 3]))
    assert crop.shape == (8, 8, 3)
    np.testing.assert_allclose(crop[2:, 2:], caffe.io.resize_image(image[0:6, 0:6], (6, 6)),
                               atol=1e-6)
    np.testing.assert_allclose(crop[:2, :, :], np.broadcast_to(det.crop_mean, (2, 8, 3)))
    np.testing.assert_allclose(crop[:, :2, :], np.broadcast_to(det.crop_mean, (8, 2, 3)))
    # The mean border preprocesses to zero, so it adds nothing to the linear score.
    (detection,) = det.detect_windows([(image, [np.array([0, 0, 3, 3])])])
    x = preprocess(crop, 255.0, 1.0)
    assert np.abs(x[:, :2, :]).max() < 1e-4
    np.testing.assert_allclose(detection["prediction"], linear(x, W, b), rtol=1e-4,
                               atol=score_atol(x, W, b))


def test_selective_search_is_refused(tmp_path):
    model, weights_file, _, _ = make_model(tmp_path, size=4)
    det = Detector(model, weights_file)
    with pytest.raises(CaffeError, match="Selective Search"):
        det.detect_selective_search(["a.jpg"])
    with pytest.raises(CaffeError, match="Selective Search"):
        det.detect(["a.jpg"], crop_mode="selective_search")
    with pytest.raises(CaffeError, match="unknown crop_mode 'grid'"):
        det.detect([], crop_mode="grid")
