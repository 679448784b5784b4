"""The public detection prototxts (tests/models, sources in tests/models/README.md) in caffepy.

MobileNet-SSD, OpenCV's ResNet-10 SSD face detector and SSD300 VGG16 (VOC0712) deploy nets;
Faster R-CNN ZF and VGG16 end-to-end test nets, with py-faster-rcnn's Python proposal layer and
with the built-in ``Proposal``; R-FCN ResNet-50 (class-agnostic); the Faster R-CNN ZF and VGG16
end-to-end train nets forward and backward. The files are read as published; the rewrites the
tests make are in ``with_input_size``, ``without_save_output`` and ``with_builtin_proposal``.
Weights are random (He-scaled gaussians, so activations neither vanish nor overflow through
the deep backbones); py-faster-rcnn's Python modules are test versions (detmodel_pylayers).
"""

from __future__ import annotations

import ast
import logging
import math
import re
from pathlib import Path

import detmodel_pylayers
import numpy as np
import pytest
import torch

import caffe
from caffe.proto import caffe_pb2
from caffe.protoio import read_net_param

from tolerance import EPS32

MODELS = Path(__file__).parent / "models"
DETECTION_FILES = [
    "mobilenet_ssd_deploy", "res10_ssd_face_deploy", "ssd300_vgg16_voc0712_deploy",
    "faster_rcnn_zf_end2end_test", "faster_rcnn_vgg16_end2end_test",
    "faster_rcnn_zf_end2end_train", "faster_rcnn_vgg16_end2end_train",
    "rfcn_resnet50_end2end_test_agnostic",
]


@pytest.fixture
def rcnn_modules(monkeypatch):
    """py-faster-rcnn's Python layer modules (test versions) importable for one test."""
    detmodel_pylayers.install(monkeypatch)
    return detmodel_pylayers


# --- rewrites -----------------------------------------------------------------------------------
def load(name: str) -> caffe_pb2.NetParameter:
    return read_net_param(MODELS / f"{name}.prototxt")


def with_input_size(param: caffe_pb2.NetParameter, height: int, width: int,
                    batch: int | None = None) -> caffe_pb2.NetParameter:
    """Set the image input 'data' (an Input layer once the net input fields are upgraded) to
    height x width (and batch)."""
    (lp,) = [lp for lp in param.layer if lp.type == "Input" and "data" in lp.top]
    dims = lp.input_param.shape[list(lp.top).index("data")].dim
    dims[2], dims[3] = height, width
    if batch is not None:
        dims[0] = batch
    return param


def without_save_output(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Drop DetectionOutput's save_output_param: SSD's generated deploy files point it at their
    author's result folders and label-map files (SSD itself fails to load them elsewhere)."""
    for lp in param.layer:
        if lp.type == "DetectionOutput":
            lp.detection_output_param.ClearField("save_output_param")
    return param


def with_builtin_proposal(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Switch py-faster-rcnn's Python rpn.proposal_layer to the built-in ``Proposal``, its
    feat_stride taken from the layer's param_str."""
    switched = 0
    for lp in param.layer:
        if lp.type == "Python" and lp.python_param.module == "rpn.proposal_layer":
            stride = ast.literal_eval("{" + lp.python_param.param_str + "}")["feat_stride"]
            lp.type = "Proposal"
            lp.ClearField("python_param")
            lp.proposal_param.feat_stride = stride
            switched += 1
    assert switched == 1
    return param


def fill_random(net: caffe.Net, seed: int = 0) -> None:
    """Random weights: He-scaled gaussians (std sqrt(2 / fan_in)) for weights, small gaussians
    for biases, Scale multipliers near 1; BatchNorm statistics are those of each BatchNorm's
    own input in the next forward (set just before it runs), so that deep residual nets keep
    unit-scale activations and box deltas stay in exp's range."""
    gen = torch.Generator().manual_seed(seed)
    names = list(net.layer_dict)
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].type
        for i, blob in enumerate(blobs):
            data = torch.from_numpy(blob.data)
            if kind == "BatchNorm":
                data.fill_(1.0 if i != 0 else 0.0)
            elif i == 0 and blob.data.ndim > 1:
                data.normal_(0, math.sqrt(2.0 / (blob.count / blob.shape[0])), generator=gen)
            elif i == 0 and kind == "Scale":
                data.normal_(1, 0.1, generator=gen)
            else:
                data.normal_(0, 0.01, generator=gen)

    def batch_norm_statistics(layer_id: int) -> None:
        name = names[layer_id]
        if net.layer_dict[name].type == "BatchNorm":
            x = net.blobs[net.bottom_names[name][0]].data
            axes = (0, *range(2, x.ndim))
            mean, var, factor = net.params[name]
            mean.data[...] = x.mean(axis=axes)
            var.data[...] = x.var(axis=axes)
            factor.data[...] = 1

    net.before_forward(batch_norm_statistics)


def random_image(net: caffe.Net, seed: int = 1) -> np.ndarray:
    image = np.random.RandomState(seed).randn(*net.blobs["data"].data.shape)
    net.blobs["data"].data[...] = image
    return image


# --- every file parses as published -------------------------------------------------------------
@pytest.mark.parametrize("name", DETECTION_FILES)
def test_prototxt_parses_unmodified(name):
    """Every layer of the file is read (counted in its text: uncommented "layer {" lines, plus
    the Input layer its net input fields upgrade to) and has a type caffepy registers."""
    text = (MODELS / f"{name}.prototxt").read_text()
    expected = len(re.findall(r"^\s*layer\s*\{", text, re.MULTILINE))
    expected += bool(re.search(r"^input:", text, re.MULTILINE))
    param = load(name)
    assert len(param.layer) == expected
    assert {lp.type for lp in param.layer} <= set(caffe.layer_type_list())


def test_face_detector_reads_opencv_clip():
    """OpenCV's DetectionOutputParameter.clip (field 1000) parses: the face deploy sets it."""
    param = load("res10_ssd_face_deploy")
    (out,) = [lp for lp in param.layer if lp.type == "DetectionOutput"]
    assert out.detection_output_param.clip is True
    assert out.detection_output_param.confidence_threshold == pytest.approx(0.2)
    assert caffe_pb2.DetectionOutputParameter().clip is False
    wire = caffe_pb2.DetectionOutputParameter(clip=True).SerializeToString()
    assert wire == b"\xc0\x3e\x01"  # field 1000, varint: tag (1000 << 3) = 8000 = 0xc0 0x3e


# --- SSD deploy nets ----------------------------------------------------------------------------
def ssd_forward(param: caffe_pb2.NetParameter, seed: int = 0) -> caffe.Net:
    net = caffe.Net(param, caffe.TEST)
    fill_random(net, seed)
    random_image(net)
    net.forward()
    return net


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSD's overlap of normalized boxes (no +1): (A, 4) x (B, 4) -> (A, B); boxes that do not
    intersect with positive area overlap 0, as in SSD's JaccardOverlap (clipped boxes can have
    zero area)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)

    def area(x):
        return (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])

    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(inter > 0, inter / np.where(inter > 0, union, 1), 0.0)


def check_detections(net: caffe.Net, lp: caffe_pb2.LayerParameter) -> np.ndarray:
    """DetectionOutput rows [image, label, score, x1, y1, x2, y2] as SSD writes them: image ids
    in range, foreground labels, scores over the threshold, at most keep_top_k per image, no
    two same-class boxes of one image overlapping past the NMS threshold, and each image's best
    row scoring its best foreground softmax probability over all priors (a copied value)."""
    p = lp.detection_output_param
    batch = net.blobs["data"].data.shape[0]
    num_priors = net.blobs["mbox_priorbox"].data.shape[2] // 4
    assert net.blobs["mbox_priorbox"].data.shape[:2] == (1, 2)
    assert net.blobs["mbox_loc"].data.shape == (batch, 4 * num_priors)
    conf = net.blobs[lp.bottom[1]].data.reshape(batch, num_priors, p.num_classes)
    rows = net.blobs[lp.top[0]].data
    assert rows.shape[:2] == (1, 1) and rows.shape[3] == 7
    rows = rows[0, 0]
    assert np.array_equal(rows[:, 0], np.round(rows[:, 0]))
    assert np.array_equal(rows[:, 1], np.round(rows[:, 1]))
    assert rows[:, 0].min() >= 0 and rows[:, 0].max() < batch
    assert np.all(np.diff(rows[:, 0]) >= 0)  # image by image
    assert rows[:, 1].min() >= 1 and rows[:, 1].max() < p.num_classes
    assert rows[:, 2].min() >= p.confidence_threshold and rows[:, 2].max() <= 1
    assert np.all(rows[:, 3] <= rows[:, 5]) and np.all(rows[:, 4] <= rows[:, 6])
    for image in range(batch):
        mine = rows[rows[:, 0] == image]
        assert 1 <= len(mine) <= p.keep_top_k
        assert mine[:, 2].max() == conf[image, :, 1:].max()
        for label in np.unique(mine[:, 1]):
            boxes = mine[mine[:, 1] == label, 3:]
            iou = jaccard(boxes, boxes) - np.eye(len(boxes))
            # float32 boxes: the overlap's few roundings are ~1e-6 of it
            assert iou.max() <= p.nms_param.nms_threshold + 1e-5
    return rows


def detection_layer(param: caffe_pb2.NetParameter) -> caffe_pb2.LayerParameter:
    (lp,) = [lp for lp in param.layer if lp.type == "DetectionOutput"]
    return lp


def test_mobilenet_ssd_deploy_forward():
    """chuanqi305's MobileNet-SSD at its own 300 x 300, two images: 1917 priors, 21 classes."""
    param = with_input_size(load("mobilenet_ssd_deploy"), 300, 300, batch=2)
    net = ssd_forward(param)
    assert net.blobs["mbox_priorbox"].data.shape == (1, 2, 4 * 1917)
    assert net.blobs["mbox_conf_flatten"].data.shape == (2, 21 * 1917)
    rows = check_detections(net, detection_layer(param))
    assert set(rows[:, 0]) == {0, 1}


def test_mobilenet_ssd_builds_unmodified_and_reshapes():
    """The file as published builds (from its path); a smaller image reshapes the priors."""
    net = caffe.Net(str(MODELS / "mobilenet_ssd_deploy.prototxt"), caffe.TEST)
    assert net.blobs["data"].data.shape == (1, 3, 300, 300)
    assert net.blobs["mbox_priorbox"].data.shape == (1, 2, 4 * 1917)
    net.blobs["data"].reshape(1, 3, 160, 160)
    net.reshape()
    # 160 px: feature maps 10, 5, 3, 2, 1, 1 with 3, 6, 6, 6, 6, 6 priors per cell
    assert net.blobs["mbox_priorbox"].data.shape == (1, 2, 4 * (300 + 150 + 54 + 24 + 6 + 6))


def test_res10_face_detector_deploy_forward():
    """OpenCV's ResNet-10 SSD face detector, 300 x 300 (its size), 2 classes."""
    net = caffe.Net(str(MODELS / "res10_ssd_face_deploy.prototxt"), caffe.TEST)
    fill_random(net)
    random_image(net)
    net.forward()
    # maps 38, 19, 10, 5 and (its conv8_2 / conv9_2 keep 5 x 5) 5, 5; 4, 6, 6, 6, 4, 4 priors
    priors = 38 * 38 * 4 + 19 * 19 * 6 + 10 * 10 * 6 + 5 * 5 * 6 + 2 * 5 * 5 * 4
    assert net.blobs["mbox_priorbox"].data.shape == (1, 2, 4 * priors)
    rows = check_detections(net, detection_layer(load("res10_ssd_face_deploy")))
    assert set(rows[:, 1]) == {1}


def test_res10_face_detector_clips_boxes():
    """The face detector sets OpenCV's ``clip: true``: decoded boxes are clamped to [0, 1];
    the same net without clip decodes boxes outside the image on these random weights."""
    param = load("res10_ssd_face_deploy")
    net = caffe.Net(param, caffe.TEST)
    fill_random(net)
    random_image(net)
    rows = net.forward()["detection_out"][0, 0].copy()
    assert rows[:, 3:].min() >= 0 and rows[:, 3:].max() <= 1
    detection_layer(param).detection_output_param.clip = False
    unclipped = caffe.Net(param, caffe.TEST)
    fill_random(unclipped)  # the same seeds: the same weights and image
    random_image(unclipped)
    free = unclipped.forward()["detection_out"][0, 0]
    assert free[:, 3:].min() < 0 or free[:, 3:].max() > 1


def test_ssd300_vgg16_deploy_forward():
    """SSD300 VGG16 at 300 x 300 (its conv8_2/conv9_2 need >= 264 px): 8732 priors, 21
    classes; save_output_param dropped (it names the author's result folder)."""
    param = without_save_output(load("ssd300_vgg16_voc0712_deploy"))
    net = ssd_forward(param)
    assert net.blobs["mbox_priorbox"].data.shape == (1, 2, 4 * 8732)
    assert net.blobs["conv4_3_norm"].data.shape == (1, 512, 38, 38)
    check_detections(net, detection_layer(param))


def test_ssd300_save_output_param_is_ignored_with_a_warning(caplog):
    """SSD's generated deploy files name a result folder (save_output_param): the file builds
    unchanged, and a warning says that no detection files are written."""
    with caplog.at_level(logging.WARNING, logger="caffe"):
        caffe.Net(str(MODELS / "ssd300_vgg16_voc0712_deploy.prototxt"), caffe.TEST)
    assert any("save_output_param ignored" in r.getMessage() for r in caplog.records)


# --- Faster R-CNN / R-FCN test nets -------------------------------------------------------------
def rcnn_test_forward(param: caffe_pb2.NetParameter, height: int, width: int,
                      share_from: caffe.Net | None = None) -> caffe.Net:
    if (height, width) != (224, 224):  # the size the files give
        param = with_input_size(param, height, width)
    net = caffe.Net(param, caffe.TEST)
    if share_from is None:
        fill_random(net)
    else:
        net.share_with(share_from)
    random_image(net)
    net.blobs["im_info"].data[...] = [[height, width, 1.0]]
    net.forward()
    return net


def check_rois(rois: np.ndarray, height: int, width: int, most: int) -> None:
    """Proposals: [0, x1, y1, x2, y2] inside the image, at least 16 px a side (min_size)."""
    assert rois.ndim == 2 and rois.shape[1] == 5 and 1 <= len(rois) <= most
    assert np.all(rois[:, 0] == 0)
    x1, y1, x2, y2 = rois[:, 1:].T
    assert x1.min() >= 0 and y1.min() >= 0 and x2.max() <= width - 1 and y2.max() <= height - 1
    assert np.all(x2 - x1 + 1 >= 16) and np.all(y2 - y1 + 1 >= 16)


def check_rcnn_outputs(net: caffe.Net, bbox_columns: int) -> None:
    rois = net.blobs["rois"].data
    prob = net.blobs["cls_prob"].data
    assert prob.shape == (len(rois), 21)
    assert net.blobs["bbox_pred"].data.reshape(len(rois), -1).shape[1] == bbox_columns
    assert prob.min() >= 0
    # a float32 softmax row: 21 terms rounded once each, the sum and the division once more
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=0, atol=23 * EPS32)


RCNN_TEST = [
    # name, input size (the files' 224 x 224; VGG16 reduced to keep the test fast), bbox columns
    ("faster_rcnn_zf_end2end_test", 224, 224, 84),
    ("faster_rcnn_vgg16_end2end_test", 96, 128, 84),
    ("rfcn_resnet50_end2end_test_agnostic", 224, 224, 8),
]


@pytest.mark.parametrize("name,height,width,bbox_columns", RCNN_TEST)
def test_rcnn_test_net_python_and_builtin_proposal(rcnn_modules, name, height, width,
                                                   bbox_columns):
    """The test net with its Python rpn.proposal_layer (py-faster-rcnn's TEST config: 6000 /
    300 proposals, NMS 0.7, min size 16), then switched to the built-in Proposal with the same
    weights and image: the same proposals and class probabilities."""
    python_net = rcnn_test_forward(load(name), height, width)
    rois = python_net.blobs["rois"].data.copy()
    check_rois(rois, height, width, most=300)
    check_rcnn_outputs(python_net, bbox_columns)

    builtin = rcnn_test_forward(with_builtin_proposal(load(name)), height, width,
                                share_from=python_net)
    assert builtin.layer_dict["proposal"].type == "Proposal"
    # Box coordinates <= 2^8 pass through ~10 float32 roundings in either version (the numpy
    # one rounds its float64 result once to the float32 blob): 10 * 2^8 * eps32 ~ 3e-4.
    np.testing.assert_allclose(builtin.blobs["rois"].data, rois, rtol=0, atol=10 * 2**8 * EPS32)
    np.testing.assert_allclose(builtin.blobs["cls_prob"].data, python_net.blobs["cls_prob"].data,
                               rtol=1e-3, atol=1e-5)


# --- Faster R-CNN end-to-end train nets ---------------------------------------------------------
RCNN_TRAIN = [
    ("faster_rcnn_zf_end2end_train", (128, 160), "cls_loss", "bbox_loss"),
    ("faster_rcnn_vgg16_end2end_train", (96, 128), "loss_cls", "loss_bbox"),
]


@pytest.mark.parametrize("name,image_shape,cls_loss,bbox_loss", RCNN_TRAIN)
def test_faster_rcnn_train_net_forward_backward(rcnn_modules, monkeypatch, name, image_shape,
                                                cls_loss, bbox_loss):
    """The end-to-end train net as published (TRAIN phase): Python data, anchor-target,
    proposal and proposal-target layers feed the RPN and R-CNN losses; backward reaches the
    first convolution through both heads (ROIPooling's backward included)."""
    monkeypatch.setattr(rcnn_modules, "IMAGE_SHAPE", image_shape)
    monkeypatch.setitem(rcnn_modules.CFG["TRAIN"], "BATCH_SIZE", 32)  # cfg.TRAIN.BATCH_SIZE
    net = caffe.Net(str(MODELS / f"{name}.prototxt"), caffe.TRAIN)
    fill_random(net)
    losses = net.forward()
    assert set(losses) == {"rpn_cls_loss", "rpn_loss_bbox", cls_loss, bbox_loss}
    assert all(np.isfinite(v) and v > 0 for v in losses.values())
    assert net.blobs["data"].data.shape == (1, 3, *image_shape)
    rois, labels = net.blobs["rois"].data, net.blobs["labels"].data
    assert rois.shape[1] == 5 and len(rois) <= 32 and labels.shape == (len(rois),)
    assert labels.max() > 0 and set(labels) <= set(range(21))  # the gt boxes join as fg
    assert net.blobs["bbox_targets"].data.shape == (len(rois), 84)
    a_h, a_w = net.blobs["rpn_cls_score"].data.shape[2:]
    assert net.blobs["rpn_labels"].data.shape == (1, 1, 9 * a_h, a_w)

    net.backward()
    for layer in ("conv1" if "zf" in name else "conv3_1", "rpn_conv/3x3", "rpn_cls_score",
                  "rpn_bbox_pred", "fc6", "cls_score", "bbox_pred"):
        diff = net.params[layer][0].diff
        assert np.all(np.isfinite(diff)) and np.abs(diff).max() > 0, layer
    if "vgg16" in name:  # py-faster-rcnn freezes conv1 and conv2 (lr_mult 0): no backward
        assert not net.params["conv1_1"][0].diff.any() and not net.params["conv2_2"][0].diff.any()


def test_faster_rcnn_zf_train_builtin_proposal_matches_python(rcnn_modules, monkeypatch):
    """In TRAIN (py-faster-rcnn's TRAIN config: 12000 / 2000 proposals) the built-in Proposal
    gives the Python layer's rpn_rois on the same weights and image."""
    monkeypatch.setattr(rcnn_modules, "IMAGE_SHAPE", (224, 288))
    python_net = caffe.Net(str(MODELS / "faster_rcnn_zf_end2end_train.prototxt"), caffe.TRAIN)
    fill_random(python_net)
    python_net.forward()
    builtin = caffe.Net(with_builtin_proposal(load("faster_rcnn_zf_end2end_train")), caffe.TRAIN)
    builtin.share_with(python_net)
    builtin.forward()
    rois = python_net.blobs["rpn_rois"].data
    check_rois(rois, *rcnn_modules.IMAGE_SHAPE, most=2000)
    assert len(rois) > 20
    # as in the test nets: coordinates <= 2^8, ~10 float32 roundings
    np.testing.assert_allclose(builtin.blobs["rpn_rois"].data, rois, rtol=0,
                               atol=10 * 2**8 * EPS32)
