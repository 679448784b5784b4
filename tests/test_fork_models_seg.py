"""The public prototxts of SegNet, DeepLab-v2 (VGG16), MobileNet v1/v2 and ShuffleNet v1 build
and run on random weights (tests/models/README.md names each file's source).

The files are stored as their repositories have them; each test rewrites the parsed
NetParameter as little as it can, and says how:

- input sizes are reduced (the nets are fully convolutional or end in a global pooling);
- SegNet's ``DenseImageData`` and DeepLab's ``ImageSegData`` read image lists from disk: they
  become ``Input`` layers with the same tops (the data are drawn here), except in one train
  test each, where they read PNGs the test writes;
- SegNet's two explicit ``upsample_h/upsample_w`` pairs are the pooled sizes of its 360x480
  input: they become those of the reduced input;
- DeepLab's templates get run_pascal.sh's values for their ``${...}`` variables
  (EXP=voc12, NET_ID=vgg16, NUM_LABELS=21), and its ``MatWrite`` (writes .mat files) is dropped.

Plus the fork pieces these files need, each against its fork's semantics: SegNet's
class-weighted SoftmaxWithLoss and DenseImageData, DeepLab's SegAccuracy and ImageSegData.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from caffe.errors import LayerError
from caffe.proto import caffe_pb2

from tolerance import EPS32

MODELS = Path(__file__).parent / "models"

# run_pascal.sh of deeplab-public-ver2 (the values its sed script puts into the templates).
DEEPLAB_VARIABLES = {"NET_ID": "vgg16", "EXP": "voc12", "NUM_LABELS": "21",
                     "DATA_ROOT": "./voc12/dataset", "TRAIN_SET": "train", "TEST_SET": "val",
                     "FEATURE_DIR": "voc12/features/vgg16"}

CONV_TYPES = ("Convolution", "ConvolutionDepthwise", "DepthwiseConvolution", "InnerProduct")


# --- rewriting and filling -------------------------------------------------------------------

def read_model(name: str, variables: dict | None = None) -> caffe_pb2.NetParameter:
    text = (MODELS / name).read_text()
    for key, value in (variables or {}).items():
        text = text.replace("${" + key + "}", value)
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return param


def set_legacy_input(param: caffe_pb2.NetParameter, shape) -> None:
    """Give the net's single legacy input (input_dim or input_shape) a new shape."""
    del param.input_dim[:]
    del param.input_shape[:]
    param.input_shape.add(dim=shape)


def data_layer_to_input(param: caffe_pb2.NetParameter, layer_type: str, shapes: dict) -> None:
    """Replace every ``layer_type`` layer by an Input layer with its tops, shaped by ``shapes``."""
    for layer in param.layer:
        if layer.type == layer_type:
            replacement = caffe_pb2.LayerParameter(name=layer.name, type="Input")
            replacement.top.extend(layer.top)
            replacement.include.extend(layer.include)
            for top in layer.top:
                replacement.input_param.shape.add(dim=shapes[top])
            layer.CopyFrom(replacement)


def drop_layers(param: caffe_pb2.NetParameter, layer_type: str) -> None:
    keep = [layer for layer in param.layer if layer.type != layer_type]
    del param.layer[:]
    param.layer.extend(keep)


def randomize(net: caffe.Net, seed: int = 0) -> None:
    """Random weights that keep activations O(1) through deep stacks: He-scaled convolutions,
    and batch-norm statistics near (0, 1) (zero variances with a zero scale factor would
    divide by sqrt(eps) at every BatchNorm and overflow)."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if not len(blobs):
            continue
        if layer.type in CONV_TYPES:
            weight = blobs[0].data
            fan_in = int(np.prod(weight.shape[1:]))
            weight[...] = rng.normal(0, np.sqrt(2.0 / fan_in), weight.shape)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.normal(0, 0.01, blobs[1].data.shape)
        elif layer.type == "BatchNorm":
            blobs[0].data[...] = rng.normal(0, 0.1, blobs[0].data.shape)
            blobs[1].data[...] = rng.uniform(0.5, 1.5, blobs[1].data.shape)
            blobs[2].data[...] = 1
        elif layer.type in ("Scale", "BN"):
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            blobs[1].data[...] = rng.normal(0, 0.1, blobs[1].data.shape)


def assert_finite(net: caffe.Net) -> None:
    for name, blob in net.blobs.items():
        assert np.isfinite(blob.data).all(), name


def check_softmax(prob: np.ndarray) -> None:
    # A float32 sum of C probabilities is within C * eps of the exact sum, 1 (Higham 4.4).
    channels = prob.shape[1]
    assert (prob >= 0).all()
    np.testing.assert_allclose(prob.sum(1), 1, rtol=0, atol=channels * EPS32)


# --- MobileNet v1 / v2, ShuffleNet v1 --------------------------------------------------------

MOBILE_INPUT = [1, 3, 96, 96]  # 224 in the files; the nets end in a global pooling


def mobile_net(name: str, rewrite=None) -> caffe.Net:
    param = read_model(name)
    set_legacy_input(param, MOBILE_INPUT)
    if rewrite:
        rewrite(param)
    return caffe.Net(param, caffe.TEST)


def as_depthwise(param: caffe_pb2.NetParameter) -> int:
    """Retype the group == num_output convolutions (one filter per channel) as
    ConvolutionDepthwise; returns how many."""
    count = 0
    for layer in param.layer:
        conv = layer.convolution_param
        if layer.type == "Convolution" and conv.group > 1 and conv.group == conv.num_output:
            layer.type = "ConvolutionDepthwise"
            count += 1
    return count


@pytest.mark.parametrize("name,depthwise", [("mobilenet_deploy.prototxt", 13),
                                            ("mobilenet_v2_deploy.prototxt", 17)])
def test_mobilenet_deploy_forward(name, depthwise):
    net = mobile_net(name)
    randomize(net)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, MOBILE_INPUT).astype(np.float32)
    net.blobs["data"].data[...] = x
    prob = net.forward()["prob"]
    assert prob.shape == (1, 1000, 1, 1)
    assert_finite(net)
    check_softmax(prob)
    logits = net.blobs["fc7"].data.copy()
    assert logits.std() > 0

    # The same net with its depthwise convolutions typed as the forks type them gives the same
    # numbers: both are a grouped convolution, so they differ at most by summation order, a
    # relative K * eps per layer (K <= 9 taps) over ~30 layers of gain ~1 on these weights.
    counted = []
    twin = mobile_net(name, lambda p: counted.append(as_depthwise(p)))
    assert counted == [depthwise]
    for layer_name, blobs in net.params.items():
        for mine, theirs in zip(twin.params[layer_name], blobs):
            mine.data[...] = theirs.data
    twin.blobs["data"].data[...] = x
    twin.forward()
    scale = np.abs(logits).max()
    np.testing.assert_allclose(twin.blobs["fc7"].data, logits, rtol=0,
                               atol=30 * 9 * EPS32 * scale)


def test_shufflenet_deploy_forward():
    param = read_model("shufflenet_1x_g3_deploy.prototxt")
    types = {layer.type for layer in param.layer}
    assert {"ShuffleChannel", "ConvolutionDepthwise"} <= types
    set_legacy_input(param, MOBILE_INPUT)
    net = caffe.Net(param, caffe.TEST)
    randomize(net)
    net.blobs["data"].data[...] = np.random.default_rng(1).normal(0, 1, MOBILE_INPUT)
    out = net.forward()
    (logits,) = out.values()
    assert logits.shape == (1, 1000, 1, 1)
    assert_finite(net)
    assert logits.std() > 0
    # Every ShuffleChannel top is its bottom with channels (g, C/g) transposed to (C/g, g).
    shuffles = [layer for layer in param.layer if layer.type == "ShuffleChannel"]
    assert len(shuffles) == 15
    for layer in shuffles:
        group = layer.shuffle_channel_param.group
        bottom = net.blobs[layer.bottom[0]].data
        n, c, h, w = bottom.shape
        expected = bottom.reshape(n, group, c // group, h, w).swapaxes(1, 2).reshape(bottom.shape)
        np.testing.assert_array_equal(net.blobs[layer.top[0]].data, expected)


# --- SegNet ----------------------------------------------------------------------------------

SEGNET_CLASSES = 11
SEGNET_IGNORE = 11
# 40 x 64 instead of 360 x 480: 40 = 8 * 5 keeps the odd sizes SegNet's 360 has after three
# poolings (45 -> 23), which its explicit upsample sizes and segnet_basic's pad_out_h expect.
SEGNET_HW = (40, 64)
# Pooled sizes of 360 x 480 named in segnet_*.prototxt -> the same poolings of 40 x 64
# (each MAX pooling 2x2/2 rounds up): 360 -> 180, 90, 45, 23 and 40 -> 20, 10, 5, 3.
SEGNET_UPSAMPLE_H = {45: 5, 23: 3}
SEGNET_UPSAMPLE_W = {60: 8, 30: 4}


def segnet_param(name: str, batch: int) -> caffe_pb2.NetParameter:
    param = read_model(name)
    h, w = SEGNET_HW
    data_layer_to_input(param, "DenseImageData",
                        {"data": [batch, 3, h, w], "label": [batch, 1, h, w]})
    for layer in param.layer:
        up = layer.upsample_param
        if layer.type == "Upsample" and up.HasField("upsample_h"):
            up.upsample_h = SEGNET_UPSAMPLE_H[up.upsample_h]
            up.upsample_w = SEGNET_UPSAMPLE_W[up.upsample_w]
    return param


@pytest.mark.parametrize("name", ["segnet_inference.prototxt",
                                  "segnet_basic_inference.prototxt"])
def test_segnet_inference_forward(name):
    net = caffe.Net(segnet_param(name, batch=1), caffe.TEST)
    randomize(net)
    net.blobs["data"].data[...] = np.random.default_rng(1).normal(0, 1, net.blobs["data"].shape)
    prob = net.forward()["prob"]
    assert prob.shape == (1, SEGNET_CLASSES, *SEGNET_HW)
    assert_finite(net)
    check_softmax(prob)
    assert prob.std() > 0


@pytest.mark.parametrize("name,first,last", [
    ("segnet_train.prototxt", "conv1_1", "conv1_1_D"),
    ("segnet_basic_train.prototxt", "conv1", "conv_classifier")])
def test_segnet_train_forward_backward(name, first, last):
    param = segnet_param(name, batch=2)
    loss_layer = next(layer for layer in param.layer if layer.type == "SoftmaxWithLoss")
    weights = np.array(loss_layer.loss_param.class_weighting)
    assert loss_layer.loss_param.weight_by_label_freqs and len(weights) == SEGNET_CLASSES
    assert loss_layer.loss_param.ignore_label == SEGNET_IGNORE
    net = caffe.Net(param, caffe.TRAIN)
    randomize(net)
    rng = np.random.default_rng(1)
    net.blobs["data"].data[...] = rng.normal(0, 1, net.blobs["data"].shape)
    # Labels in [0, 11): the Accuracy layer (no ignore_label in these files) takes no void.
    labels = rng.integers(0, SEGNET_CLASSES, net.blobs["label"].shape)
    net.blobs["label"].data[...] = labels
    out = net.forward()
    assert_finite(net)
    assert out["per_class_accuracy"].shape == (SEGNET_CLASSES,)

    # The loss is SegNet's weighted formula on the net's own scores.
    scores = net.blobs[last].data.astype(np.float64)
    assert scores.shape == (2, SEGNET_CLASSES, *SEGNET_HW)
    z = scores - scores.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    picked = np.take_along_axis(logp, labels.astype(np.int64), 1)[:, 0]
    expected = -(weights[labels[:, 0]] * picked).sum() / labels.size
    # float32 softmax and log per pixel (a few eps relative), then a sum of n = 5120 positive
    # terms: within n * eps of the float64 sum, relative.
    np.testing.assert_allclose(out["loss"], expected, rtol=labels.size * EPS32)

    net.backward()
    for layer_name, blobs in net.params.items():
        for blob in blobs:
            assert np.isfinite(blob.diff).all(), layer_name
    assert np.abs(net.params[first][0].diff).max() > 0
    assert np.abs(net.params[last][0].diff).max() > 0


# --- DeepLab v2 (VGG16, ASPP-L) --------------------------------------------------------------

DEEPLAB_SIZE = 65  # 32 * k - 31 as the prototxt asks (k = 3); the files use 321 and 513
DEEPLAB_SCORE = 9  # after the three stride-2 poolings: 65 -> 33 -> 17 -> 9
DEEPLAB_CLASSES = 21


def deeplab_param(name: str, batch: int) -> caffe_pb2.NetParameter:
    param = read_model(name, DEEPLAB_VARIABLES)
    s = DEEPLAB_SIZE
    data_layer_to_input(param, "ImageSegData", {"data": [batch, 3, s, s],
                                                "label": [batch, 1, s, s],
                                                "data_dim": [batch, 1, 1, 2]})
    drop_layers(param, "MatWrite")
    return param


def test_deeplab_v2_vgg16_test_forward():
    param = deeplab_param("deeplab_v2_vgg16_test.prototxt", batch=1)
    net = caffe.Net(param, caffe.TEST)
    randomize(net)
    net.blobs["data"].data[...] = np.random.default_rng(1).normal(0, 1, net.blobs["data"].shape)
    out = net.forward()
    assert out["fc8_interp"].shape == (1, DEEPLAB_CLASSES, DEEPLAB_SIZE, DEEPLAB_SIZE)
    assert net.blobs["fc8_voc12"].shape == (1, DEEPLAB_CLASSES, DEEPLAB_SCORE, DEEPLAB_SCORE)
    assert_finite(net)
    scores = net.blobs["fc8_voc12"].data
    assert scores.std() > 0
    # zoom_factor 8: output pixel 8i lies exactly on input pixel i, where the bilinear weights
    # are 1 and 0.
    np.testing.assert_array_equal(out["fc8_interp"][:, :, ::8, ::8], scores)


def test_deeplab_v2_vgg16_train_forward_backward():
    param = deeplab_param("deeplab_v2_vgg16_train.prototxt", batch=1)
    net = caffe.Net(param, caffe.TRAIN)
    randomize(net)
    rng = np.random.default_rng(1)
    net.blobs["data"].data[...] = rng.normal(0, 1, net.blobs["data"].shape)
    labels = rng.integers(0, DEEPLAB_CLASSES, net.blobs["label"].shape).astype(np.float32)
    labels[rng.random(labels.shape) < 0.2] = 255  # DeepLab's ignore label
    net.blobs["label"].data[...] = labels
    # The loss layer has no top: the net gives it an anonymous "(automatic)" one, as Caffe's
    # AutoTopBlobs does, which is no net output; its loss is what a forward pass returns.
    assert "loss" not in net.outputs
    loss = net.forward_from_to(0, len(net.layers) - 1)
    assert_finite(net)
    # shrink_factor 8 samples the label map on the 9 x 9 grid of input pixels 8i.
    shrunk = net.blobs["label_shrink"].data
    np.testing.assert_array_equal(shrunk, labels[:, :, ::8, ::8])
    assert np.isfinite(loss) and loss > 0
    accuracy = net.blobs["accuracy"].data
    assert accuracy.shape == (1, 1, 1, 3)
    assert ((0 <= accuracy) & (accuracy <= 1)).all()
    net.backward()
    for layer_name, blobs in net.params.items():
        for blob in blobs:
            assert np.isfinite(blob.diff).all(), layer_name
    assert np.abs(net.params["conv1_1"][0].diff).max() > 0
    assert np.abs(net.params["fc8_voc12_4"][0].diff).max() > 0


def test_segnet_and_deeplab_build_at_their_own_input_sizes():
    """Without the size rewrites: SegNet at CamVid's 360 x 480 with its explicit upsample sizes,
    DeepLab's test net at its 513 x 513 crop (building allocates no blob memory; no forward)."""
    param = read_model("segnet_inference.prototxt")
    data_layer_to_input(param, "DenseImageData",
                        {"data": [1, 3, 360, 480], "label": [1, 1, 360, 480]})
    net = caffe.Net(param, caffe.TEST)
    assert net.blobs["pool5_D"].shape == (1, 512, 23, 30)
    assert net.blobs["pool4_D"].shape == (1, 512, 45, 60)
    assert net.blobs["prob"].shape == (1, SEGNET_CLASSES, 360, 480)
    param = read_model("deeplab_v2_vgg16_test.prototxt", DEEPLAB_VARIABLES)
    data_layer_to_input(param, "ImageSegData", {"data": [1, 3, 513, 513],
                                                "label": [1, 1, 513, 513],
                                                "data_dim": [1, 1, 1, 2]})
    drop_layers(param, "MatWrite")
    net = caffe.Net(param, caffe.TEST)
    assert net.blobs["fc8_voc12"].shape == (1, DEEPLAB_CLASSES, 65, 65)
    assert net.blobs["fc8_interp"].shape == (1, DEEPLAB_CLASSES, 513, 513)


# --- SegNet's class-weighted SoftmaxWithLoss -------------------------------------------------

WEIGHTED_LOSS = """
name: "weighted" force_backward: true
layer { name: "in" type: "Input" top: "score" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 }
                      shape { dim: 2 dim: 1 dim: 4 dim: 5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
        loss_weight: 2.5
        loss_param: { weight_by_label_freqs: true ignore_label: 3
                      class_weighting: 0.5 class_weighting: 2.0 class_weighting: 7.25 } }
"""


def weighted_net(text: str = WEIGHTED_LOSS) -> caffe.Net:
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return caffe.Net(param, caffe.TRAIN, dtype=torch.float64)


def test_weighted_softmax_loss_matches_segnet_formula():
    # SegNet: loss = -sum_valid w[l] log p_l / (number of valid pixels);
    # dE/dscore = loss_weight * w[l] * (p - onehot(l)) / (number of valid pixels), 0 if ignored.
    net = weighted_net()
    rng = np.random.default_rng(0)
    score = rng.normal(0, 2, (2, 3, 4, 5))
    label = rng.integers(0, 4, (2, 1, 4, 5)).astype(np.float64)  # 3 is ignored
    net.blobs["score"].data[...] = score
    net.blobs["label"].data[...] = label
    loss = float(net.forward()["loss"])
    net.backward()

    w = np.array([0.5, 2.0, 7.25])
    lab = label[:, 0].astype(int)
    valid = lab != 3
    p = np.exp(score - score.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    safe = np.where(valid, lab, 0)
    p_label = np.take_along_axis(p, safe[:, None], 1)[:, 0]
    count = valid.sum()
    expected = -(w[safe] * np.log(p_label) * valid).sum() / count
    onehot = np.eye(3)[safe].transpose(0, 3, 1, 2)
    grad = 2.5 * (w[safe] * valid)[:, None] * (p - onehot) / count
    # float64 throughout: 40 terms of size <= 10, so 1e-12 is far above the rounding.
    # The top holds the loss itself; loss_weight scales what the net sums and the gradient.
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    np.testing.assert_allclose(net.blobs["score"].diff, grad, rtol=1e-12, atol=1e-15)
    # Unweighted Caffe 1.0 gives another number: the weights are really applied.
    plain = -(np.log(p_label) * valid).sum() / count
    assert abs(loss - plain) > 1e-3


def test_weighted_softmax_loss_off_without_flag_and_checks_count():
    net = weighted_net(WEIGHTED_LOSS.replace("weight_by_label_freqs: true", ""))
    net.blobs["score"].data[...] = 0
    net.blobs["label"].data[...] = 1
    # All scores equal: p = 1/3 everywhere; the class_weighting list alone changes nothing.
    np.testing.assert_allclose(float(net.forward()["loss"]), np.log(3), rtol=1e-12)
    with pytest.raises(LayerError, match=r"class weight values \(2\).*classes \(3\)"):
        weighted_net(WEIGHTED_LOSS.replace("class_weighting: 7.25", ""))


def test_segnet_loss_fields_at_documented_numbers():
    fields = caffe_pb2.LossParameter.DESCRIPTOR.fields_by_name
    assert fields["normalization"].number == 3  # 1.0's; SegNet's 3 moved to 5003
    assert fields["weight_by_label_freqs"].number == 5003
    assert fields["class_weighting"].number == 4


# --- DeepLab's SegAccuracy -------------------------------------------------------------------

def seg_accuracy_net(extra: str = "") -> caffe.Net:
    text = """
    layer { name: "in" type: "Input" top: "score" top: "label"
            input_param { shape { dim: 1 dim: 3 dim: 2 dim: 3 }
                          shape { dim: 1 dim: 1 dim: 2 dim: 3 } } }
    layer { name: "acc" type: "SegAccuracy" bottom: "score" bottom: "label" top: "acc"
            seg_accuracy_param { ignore_label: 255 EXTRA } }
    """.replace("EXTRA", extra)
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return caffe.Net(param, caffe.TEST)


def one_hot_scores(predicted) -> np.ndarray:
    scores = np.zeros((1, 3, 2, 3), np.float32)
    for i, c in enumerate(predicted):
        scores[0, c, i // 3, i % 3] = 1
    return scores


def test_seg_accuracy_scores():
    net = seg_accuracy_net()
    # pixels: truth 0 0 1 1 255 2, predicted 0 1 1 1 2 0 (the 255 pixel is ignored)
    net.blobs["score"].data[...] = one_hot_scores([0, 1, 1, 1, 2, 0])
    net.blobs["label"].data[...] = np.array([0, 0, 1, 1, 255, 2]).reshape(1, 1, 2, 3)
    out = net.forward()["acc"]
    # confusion rows (truth) x columns (prediction): [[1,1,0],[0,2,0],[1,0,0]]
    accuracy = 3 / 5
    recall = (1 / 2 + 2 / 2 + 0 / 1) / 3
    jaccard = (1 / (2 + 2 - 1) + 2 / (2 + 3 - 2) + 0 / (1 + 0 - 0)) / 3
    np.testing.assert_allclose(out.reshape(-1), [accuracy, recall, jaccard], rtol=1e-6)
    # Ties go to the larger class index; a class absent from truth and prediction counts 1 in
    # the mean Jaccard, and is left out of the mean recall.
    net.blobs["score"].data[...] = 0
    net.blobs["label"].data[...] = 2
    np.testing.assert_allclose(net.forward()["acc"].reshape(-1), [1, 1, 1], rtol=1e-6)


def test_seg_accuracy_accumulates_without_reset_and_rejects_bad_labels():
    net = seg_accuracy_net("reset: false")
    net.blobs["score"].data[...] = one_hot_scores([0, 0, 0, 0, 0, 0])
    net.blobs["label"].data[...] = np.array([0, 0, 0, 1, 1, 1]).reshape(1, 1, 2, 3)
    np.testing.assert_allclose(net.forward()["acc"].reshape(-1)[0], 0.5, rtol=1e-6)
    net.blobs["label"].data[...] = 0
    # counts add up: 3 + 6 right of 12
    np.testing.assert_allclose(net.forward()["acc"].reshape(-1)[0], 9 / 12, rtol=1e-6)
    net.blobs["label"].data[...] = 3
    with pytest.raises(LayerError, match=r"label value 3 .*\[0, 3\)"):
        net.forward()


# --- SegNet's DenseImageData -----------------------------------------------------------------

def write_pairs(folder: Path, count: int, height: int, width: int, classes: int = 12,
                seed: int = 0) -> Path:
    """``count`` PNG pairs whose image has, in every channel, the label image's values plus 100
    (so any misplaced crop or flip between the two shows), and their list file."""
    from caffe.data import image as cvimage

    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        label = rng.integers(0, classes, (height, width)).astype(np.uint8)
        picture = np.repeat((label + 100)[:, :, None], 3, axis=2)
        (folder / f"img{i}.png").write_bytes(cvimage.imencode(picture, "png"))
        (folder / f"lab{i}.png").write_bytes(cvimage.imencode(label, "png"))
        lines.append(f"img{i}.png lab{i}.png")
    source = folder / "list.txt"
    source.write_text("\n".join(lines) + "\n")
    return source


def dense_net(source: Path, folder: Path, params: str, transform: str = "") -> caffe.Net:
    text = f"""
    layer {{ name: "data" type: "DenseImageData" top: "data" top: "label" {transform}
             dense_image_data_param {{ source: "{source}" root_folder: "{folder}/" {params} }} }}
    """
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return caffe.Net(param, caffe.TRAIN)


def test_dense_image_data_keeps_image_and_label_together(tmp_path):
    source = write_pairs(tmp_path, 3, 12, 16)
    net = dense_net(source, tmp_path, "batch_size: 4 mirror: true crop_height: 5 crop_width: 7 "
                                      "shuffle: true")
    assert net.blobs["data"].shape == (4, 3, 5, 7)
    assert net.blobs["label"].shape == (4, 1, 5, 7)
    for _ in range(3):
        net.forward()
        data, label = net.blobs["data"].data, net.blobs["label"].data
        for c in range(3):
            np.testing.assert_array_equal(data[:, c], label[:, 0] + 100)
        assert set(np.unique(label)) <= set(range(12))


def test_dense_image_data_resizes_label_by_nearest_neighbour(tmp_path):
    source = write_pairs(tmp_path, 1, 6, 8)
    from caffe.data import image as cvimage

    original = cvimage.imread(str(tmp_path / "lab0.png"), cvimage.IMREAD_GRAYSCALE)
    net = dense_net(source, tmp_path, "batch_size: 1 new_height: 3 new_width: 5",
                    "transform_param { scale: 0.5 mean_value: 10 }")
    net.forward()
    # INTER_NEAREST picks source row floor(y * 6 / 3), column floor(x * 8 / 5).
    rows = np.floor(np.arange(3) * 2.0).astype(int)
    cols = np.floor(np.arange(5) * 1.6).astype(int)
    np.testing.assert_array_equal(net.blobs["label"].data[0, 0], original[rows][:, cols])
    # The transform (mean, then scale) applies to the image only.
    assert net.blobs["data"].shape == (1, 3, 3, 5)
    # Bilinear resizing keeps the image within its values 100..111.
    image = net.blobs["data"].data
    assert (100 - 10) * 0.5 <= image.min() and image.max() <= (111 - 10) * 0.5


def test_dense_image_data_refuses_transform_crop(tmp_path):
    source = write_pairs(tmp_path, 1, 6, 8)
    with pytest.raises(LayerError, match="crop_size"):
        dense_net(source, tmp_path, "batch_size: 1", "transform_param { crop_size: 4 }")


def test_segnet_basic_train_from_its_data_layer(tmp_path):
    """segnet_basic_train.prototxt with its own DenseImageData layer, reading a list of PNGs
    (its source and batch size pointed at them), forward and backward."""
    h, w = SEGNET_HW
    source = write_pairs(tmp_path, 2, h, w, classes=SEGNET_CLASSES)
    param = read_model("segnet_basic_train.prototxt")
    data = param.layer[0]
    assert data.type == "DenseImageData"
    data.dense_image_data_param.source = str(source)
    data.dense_image_data_param.root_folder = str(tmp_path) + "/"
    data.dense_image_data_param.batch_size = 2
    net = caffe.Net(param, caffe.TRAIN)
    randomize(net)
    out = net.forward()
    labels = net.blobs["label"].data
    assert labels.shape == (2, 1, h, w)
    # Labels in [0, 11) again: the Accuracy layer takes no void.
    assert labels.max() < SEGNET_CLASSES
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    net.backward()
    assert np.abs(net.params["conv1"][0].diff).max() > 0


# --- DeepLab's ImageSegData ------------------------------------------------------------------

def seg_data_net(source: Path, folder: Path, params: str, transform: str,
                 phase=caffe.TRAIN) -> caffe.Net:
    text = f"""
    layer {{ name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
             transform_param {{ {transform} }}
             image_data_param {{ source: "{source}" root_folder: "{folder}/" {params} }} }}
    """
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return caffe.Net(param, phase)


def test_image_seg_data_pads_with_mean_and_ignore_label(tmp_path):
    source = write_pairs(tmp_path, 2, 6, 8)  # image = label + 100 in every channel
    net = seg_data_net(source, tmp_path, "batch_size: 2 label_type: PIXEL shuffle: true",
                       "crop_size: 10 mirror: true mean_value: 100 scale: 2")
    assert net.blobs["data"].shape == (2, 3, 10, 10)
    for _ in range(2):
        net.forward()
        data, label = net.blobs["data"].data, net.blobs["label"].data[:, 0]
        padded = label == 255
        # 6 x 8 in a 10 x 10 crop: 100 - 48 pixels of padding, labelled ignore (255).
        assert padded.sum(axis=(1, 2)).tolist() == [52, 52]
        for c in range(3):
            np.testing.assert_array_equal(data[:, c], np.where(padded, 0, 2 * label))
        np.testing.assert_array_equal(net.blobs["data_dim"].data.reshape(2, 2), [[6, 8], [6, 8]])


def test_image_seg_data_centre_crop_in_test_and_label_types(tmp_path):
    source = write_pairs(tmp_path, 1, 12, 16)
    from caffe.data import image as cvimage

    original = cvimage.imread(str(tmp_path / "lab0.png"), cvimage.IMREAD_GRAYSCALE)
    net = seg_data_net(source, tmp_path, "batch_size: 1 label_type: PIXEL", "crop_size: 4",
                       caffe.TEST)
    net.forward()
    # TEST crops the middle: offsets ((12 - 4) / 2, (16 - 4) / 2) = (4, 6).
    np.testing.assert_array_equal(net.blobs["label"].data[0, 0], original[4:8, 6:10])
    np.testing.assert_array_equal(net.blobs["data_dim"].data.reshape(2), [4, 4])
    none = seg_data_net(source, tmp_path, "batch_size: 1 label_type: NONE ignore_label: 254",
                        "", caffe.TEST)
    none.forward()
    assert none.blobs["data"].shape == (1, 3, 12, 16)
    assert (none.blobs["label"].data == 254).all()
    np.testing.assert_array_equal(none.blobs["data_dim"].data.reshape(2), [12, 16])


def test_deeplab_v2_vgg16_train_from_its_data_layer(tmp_path):
    """The train template with its own ImageSegData reading PNGs: DATA_ROOT points at them,
    the list source, batch_size (10) and crop_size (321) are set to a 1 x 65 x 65 batch."""
    source = write_pairs(tmp_path, 1, 50, 60, classes=DEEPLAB_CLASSES)
    source.write_text("/img0.png /lab0.png\n")  # DeepLab's lists start each path with '/'
    variables = dict(DEEPLAB_VARIABLES, DATA_ROOT=str(tmp_path))
    param = read_model("deeplab_v2_vgg16_train.prototxt", variables)
    data = param.layer[0]
    assert data.type == "ImageSegData" and data.image_data_param.root_folder == str(tmp_path)
    data.image_data_param.source = str(source)
    data.image_data_param.batch_size = 1
    data.transform_param.crop_size = DEEPLAB_SIZE
    net = caffe.Net(param, caffe.TRAIN)
    randomize(net)
    loss = net.forward_from_to(0, len(net.layers) - 1)
    label = net.blobs["label"].data
    assert label.shape == (1, 1, DEEPLAB_SIZE, DEEPLAB_SIZE)
    # 50 x 60 padded to 65 x 65 with ignore labels, which the loss skips.
    assert (label == 255).sum() == 65 * 65 - 50 * 60
    np.testing.assert_array_equal(net.blobs["data_dim"].data.reshape(2), [50, 60])
    assert np.isfinite(loss) and loss > 0
    net.backward()
    assert np.abs(net.params["conv1_1"][0].diff).max() > 0
