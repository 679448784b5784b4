"""SSD's ``examples/ssd/ssd_pascal.py`` recipe on caffepy: NetSpec + ``caffe.model_libs`` write
the train, test and deploy prototxts and the solver of an SSD detector.

    python examples/detection/ssd_pascal_style.py [OUT_DIR]

With the defaults this writes what SSD's script writes for VGG_VOC0712_SSD_300x300 (four GPUs,
batch 8 per GPU, the atrous VGG16 body, six prior layers; tests compare the result with the
prototxts SSD's script generated). ``run.py`` in this folder uses the same recipe with a tiny
body and 64 x 64 images (``SSDConfig(body="tiny", ...)``) and trains it.

The steps are the fork's: an ``AnnotatedData`` layer with batch samplers and SSD's transform
extensions; a body (VGGNetBody + AddExtraLayers); ``CreateMultiBoxHead``; ``MultiBoxLoss`` in
the train net; softmax, ``DetectionOutput`` and ``DetectionEvaluate`` in the test net; the
deploy net is the test net without its first (data) and last (evaluation) layer, fed by an
input blob; the solver tests with ``eval_type: "detection"``.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

if __name__ == "__main__":  # run from a source checkout too
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))

import caffe  # noqa: E402
from caffe.model_libs import (  # noqa: E402
    ConvBNLayer,
    CreateAnnotatedDataLayer,
    CreateMultiBoxHead,
    L,
    P,
    VGGNetBody,
    caffe_pb2,
)


def ssd_batch_samplers() -> list[dict[str, Any]]:
    """SSD's seven samplers: the whole image, then crops of scale 0.3-1 and aspect 1/2-2
    overlapping some box by IoU >= 0.1, 0.3, 0.5, 0.7, 0.9, or by anything (max IoU 1)."""
    crop = {"min_scale": 0.3, "max_scale": 1.0, "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0}
    samplers: list[dict[str, Any]] = [{"sampler": {}, "max_trials": 1, "max_sample": 1}]
    for overlap in (0.1, 0.3, 0.5, 0.7, 0.9):
        samplers.append({"sampler": dict(crop),
                         "sample_constraint": {"min_jaccard_overlap": overlap},
                         "max_trials": 50, "max_sample": 1})
    samplers.append({"sampler": dict(crop), "sample_constraint": {"max_jaccard_overlap": 1.0},
                     "max_trials": 50, "max_sample": 1})
    return samplers


def ssd_train_transform(height: int, width: int, mean_value: list[float],
                        expand_ratio: float = 4.0) -> dict[str, Any]:
    """SSD's training transform: mirror, mean, warp to height x width with a random one of
    five interpolations, photometric distortions, zoom-out (expand) and centre emit."""
    return {
        "mirror": True,
        "mean_value": mean_value,
        "resize_param": {"prob": 1, "resize_mode": P.Resize.WARP, "height": height,
                         "width": width,
                         "interp_mode": [P.Resize.LINEAR, P.Resize.AREA, P.Resize.NEAREST,
                                         P.Resize.CUBIC, P.Resize.LANCZOS4]},
        "distort_param": {"brightness_prob": 0.5, "brightness_delta": 32,
                          "contrast_prob": 0.5, "contrast_lower": 0.5, "contrast_upper": 1.5,
                          "hue_prob": 0.5, "hue_delta": 18, "saturation_prob": 0.5,
                          "saturation_lower": 0.5, "saturation_upper": 1.5,
                          "random_order_prob": 0.0},
        "expand_param": {"prob": 0.5, "max_expand_ratio": expand_ratio},
        "emit_constraint": {"emit_type": caffe_pb2.EmitConstraint.CENTER},
    }


def ssd_test_transform(height: int, width: int, mean_value: list[float]) -> dict[str, Any]:
    return {"mean_value": mean_value,
            "resize_param": {"prob": 1, "resize_mode": P.Resize.WARP, "height": height,
                             "width": width, "interp_mode": [P.Resize.LINEAR]}}


def AddExtraLayers(net: caffe.NetSpec, use_batchnorm: bool = True,
                   lr_mult: float = 1) -> caffe.NetSpec:
    """SSD300's extra layers after fc7: conv6 (10x10), conv7 (5x5), conv8 (3x3), conv9 (1x1),
    each a 1x1 reduction and a 3x3 convolution."""
    from_layer = net.keys()[-1]
    for out_layer, num_output, kernel_size, pad, stride in (
            ("conv6_1", 256, 1, 0, 1), ("conv6_2", 512, 3, 1, 2),
            ("conv7_1", 128, 1, 0, 1), ("conv7_2", 256, 3, 1, 2),
            ("conv8_1", 128, 1, 0, 1), ("conv8_2", 256, 3, 0, 1),
            ("conv9_1", 128, 1, 0, 1), ("conv9_2", 256, 3, 0, 1)):
        ConvBNLayer(net, from_layer, out_layer, use_batchnorm, True, num_output, kernel_size,
                    pad, stride, lr_mult=lr_mult)
        from_layer = out_layer
    return net


def vgg16_body(net: caffe.NetSpec, cfg: SSDConfig) -> None:
    """SSD300's body: the fully convolutional, reduced, atrous VGG16 and the extra layers."""
    VGGNetBody(net, from_layer="data", fully_conv=True, reduced=True, dilated=True,
               dropout=False)
    AddExtraLayers(net, cfg.use_batchnorm, lr_mult=cfg.lr_mult)


def tiny_body(net: caffe.NetSpec, cfg: SSDConfig) -> None:
    """A small body for 64 x 64 images: conv1 (stride 2) and conv2 at 32 x 32, a pool, conv3
    at 16 x 16, a pool, conv4 at 8 x 8, then stride-2 conv5 (4 x 4) and conv6 (2 x 2): prior
    sources with steps 8, 16 and 32."""
    from_layer = "data"
    for index, width, stride in ((1, 12, 2), (2, 24, 1), (3, 32, 1), (4, 48, 1), (5, 48, 2),
                                 (6, 48, 2)):
        ConvBNLayer(net, from_layer, f"conv{index}", cfg.use_batchnorm, True, width, 3, 1,
                    stride, lr_mult=cfg.lr_mult)
        from_layer = f"conv{index}"
        if index in (2, 3):
            net[f"pool{index}"] = L.Pooling(net[from_layer], pool=P.Pooling.MAX, kernel_size=2,
                                            stride=2)
            from_layer = f"pool{index}"


BODIES = {"vgg16": vgg16_body, "tiny": tiny_body}


@dataclass
class SSDConfig:
    """The settings at the top of SSD's ssd_pascal.py; the defaults are its VOC0712 SSD300."""

    body: str = "vgg16"
    train_data: str = "examples/VOC0712/VOC0712_trainval_lmdb"
    test_data: str = "examples/VOC0712/VOC0712_test_lmdb"
    label_map_file: str = "data/VOC0712/labelmap_voc.prototxt"
    name_size_file: str | None = "data/VOC0712/test_name_size.txt"
    # save_output_param of DetectionOutput (SSD writes VOC result files); None for none.
    save_output_param: dict[str, Any] | None = None
    resize_height: int = 300
    resize_width: int = 300
    mean_value: list[float] = field(default_factory=lambda: [104, 117, 123])
    expand_ratio: float = 4.0
    use_batchnorm: bool = False
    lr_mult: float = 1
    num_classes: int = 21
    model_name: str = ""  # default VGG_VOC0712_SSD_<h>x<w>
    save_dir: str = ""  # default models/VGGNet/VOC0712/SSD_<h>x<w>
    # Prior boxes: sources and sizes; sizes default to SSD's 20%-90% spacing of min_dim.
    mbox_source_layers: list[str] = field(default_factory=lambda: [
        "conv4_3", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"])
    min_sizes: list[float] | None = None
    max_sizes: list[float] | None = None
    steps: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 100, 300])
    aspect_ratios: list[list[float]] = field(default_factory=lambda: [
        [2], [2, 3], [2, 3], [2, 3], [2], [2]])
    normalizations: list[float] = field(default_factory=lambda: [20, -1, -1, -1, -1, -1])
    head_kernel_size: int = 3
    head_pad: int = 1
    # Solver.
    gpus: str = "0,1,2,3"
    batch_size: int = 32
    accum_batch_size: int = 32
    base_lr: float | None = None  # default SSD's, scaled for the loss normalization
    solver_type: str = "SGD"
    weight_decay: float = 0.0005
    max_iter: int = 120000
    stepvalue: list[int] = field(default_factory=lambda: [80000, 100000, 120000])
    snapshot: int = 80000
    display: int = 10
    num_test_image: int = 4952
    test_batch_size: int = 8
    test_interval: int = 10000
    ap_version: str = "11point"
    keep_top_k: int = 200
    confidence_threshold: float = 0.01

    def __post_init__(self) -> None:
        resize = f"{self.resize_width}x{self.resize_height}"
        self.model_name = self.model_name or f"VGG_VOC0712_SSD_{resize}"
        self.save_dir = self.save_dir or f"models/VGGNet/VOC0712/SSD_{resize}"
        if self.min_sizes is None:
            self.min_sizes, self.max_sizes = ssd_prior_sizes(
                min(self.resize_height, self.resize_width), len(self.mbox_source_layers))

    @property
    def neg_pos_ratio(self) -> float:
        return 3.0

    @property
    def loc_weight(self) -> float:
        return (self.neg_pos_ratio + 1.0) / 4.0


def ssd_prior_sizes(min_dim: int, num_layers: int, min_ratio: int = 20,
                    max_ratio: int = 90) -> tuple[list[float], list[float]]:
    """SSD's prior sizes: 10%/20% of min_dim for the first layer, then ratios from
    ``min_ratio`` to ``max_ratio`` percent in equal integer steps."""
    step = int(math.floor((max_ratio - min_ratio) / (num_layers - 2)))
    ratios = range(min_ratio, max_ratio + 1, step)
    min_sizes = [min_dim * 10 / 100.0] + [min_dim * r / 100.0 for r in ratios]
    max_sizes = [min_dim * 20 / 100.0] + [min_dim * (r + step) / 100.0 for r in ratios]
    return min_sizes, max_sizes


def multibox_loss_param(cfg: SSDConfig) -> dict[str, Any]:
    return {
        "loc_loss_type": P.MultiBoxLoss.SMOOTH_L1,
        "conf_loss_type": P.MultiBoxLoss.SOFTMAX,
        "loc_weight": cfg.loc_weight,
        "num_classes": cfg.num_classes,
        "share_location": True,
        "match_type": P.MultiBoxLoss.PER_PREDICTION,
        "overlap_threshold": 0.5,
        "use_prior_for_matching": True,
        "background_label_id": 0,
        "use_difficult_gt": True,
        "mining_type": P.MultiBoxLoss.MAX_NEGATIVE,
        "neg_pos_ratio": cfg.neg_pos_ratio,
        "neg_overlap": 0.5,
        "code_type": P.PriorBox.CENTER_SIZE,
        "ignore_cross_boundary_bbox": False,
    }


def _gpu_split(cfg: SSDConfig) -> tuple[int, int, int, int]:
    """(batch per device, iter_size, solver_mode, device_id), as SSD divides the batch."""
    gpulist = [g for g in cfg.gpus.split(",") if g.strip()]
    if not gpulist:
        iter_size = cfg.accum_batch_size // cfg.batch_size
        return cfg.batch_size, iter_size, P.Solver.CPU, 0
    per_device = int(math.ceil(cfg.batch_size / len(gpulist)))
    iter_size = int(math.ceil(cfg.accum_batch_size / (per_device * len(gpulist))))
    return per_device, iter_size, P.Solver.GPU, int(gpulist[0])


def _body_and_head(net: caffe.NetSpec, cfg: SSDConfig) -> list:
    BODIES[cfg.body](net, cfg)
    return CreateMultiBoxHead(
        net, data_layer="data", from_layers=cfg.mbox_source_layers,
        use_batchnorm=cfg.use_batchnorm, min_sizes=cfg.min_sizes, max_sizes=cfg.max_sizes,
        aspect_ratios=cfg.aspect_ratios, steps=cfg.steps, normalizations=cfg.normalizations,
        num_classes=cfg.num_classes, share_location=True, flip=True, clip=False,
        prior_variance=[0.1, 0.1, 0.2, 0.2], kernel_size=cfg.head_kernel_size,
        pad=cfg.head_pad, lr_mult=cfg.lr_mult)


def build_train_net(cfg: SSDConfig) -> caffe_pb2.NetParameter:
    net = caffe.NetSpec()
    batch_per_device = _gpu_split(cfg)[0]
    net.data, net.label = CreateAnnotatedDataLayer(
        cfg.train_data, batch_size=batch_per_device, train=True, output_label=True,
        label_map_file=cfg.label_map_file,
        transform_param=ssd_train_transform(cfg.resize_height, cfg.resize_width,
                                            cfg.mean_value, cfg.expand_ratio),
        batch_sampler=ssd_batch_samplers())
    mbox_layers = _body_and_head(net, cfg)
    mbox_layers.append(net.label)
    net.mbox_loss = L.MultiBoxLoss(*mbox_layers, multibox_loss_param=multibox_loss_param(cfg),
                                   loss_param={"normalization": P.Loss.VALID},
                                   include=dict(phase=caffe_pb2.Phase.Value("TRAIN")),
                                   propagate_down=[True, True, False, False])
    proto = net.to_proto()
    proto.name = f"{cfg.model_name}_train"
    return proto


def build_test_net(cfg: SSDConfig) -> caffe_pb2.NetParameter:
    net = caffe.NetSpec()
    net.data, net.label = CreateAnnotatedDataLayer(
        cfg.test_data, batch_size=cfg.test_batch_size, train=False, output_label=True,
        label_map_file=cfg.label_map_file,
        transform_param=ssd_test_transform(cfg.resize_height, cfg.resize_width,
                                           cfg.mean_value))
    mbox_layers = _body_and_head(net, cfg)
    net.mbox_conf_reshape = L.Reshape(net.mbox_conf, shape=dict(dim=[0, -1, cfg.num_classes]))
    net.mbox_conf_softmax = L.Softmax(net.mbox_conf_reshape, axis=2)
    net.mbox_conf_flatten = L.Flatten(net.mbox_conf_softmax, axis=1)
    mbox_layers[1] = net.mbox_conf_flatten
    det_out_param: dict[str, Any] = {
        "num_classes": cfg.num_classes, "share_location": True, "background_label_id": 0,
        "nms_param": {"nms_threshold": 0.45, "top_k": 400}, "keep_top_k": cfg.keep_top_k,
        "confidence_threshold": cfg.confidence_threshold, "code_type": P.PriorBox.CENTER_SIZE}
    if cfg.save_output_param:
        det_out_param["save_output_param"] = cfg.save_output_param
    det_eval_param: dict[str, Any] = {
        "num_classes": cfg.num_classes, "background_label_id": 0, "overlap_threshold": 0.5,
        "evaluate_difficult_gt": False}
    if cfg.name_size_file:
        det_eval_param["name_size_file"] = cfg.name_size_file
    test_phase = dict(phase=caffe_pb2.Phase.Value("TEST"))
    net.detection_out = L.DetectionOutput(*mbox_layers, detection_output_param=det_out_param,
                                          include=test_phase)
    net.detection_eval = L.DetectionEvaluate(net.detection_out, net.label,
                                             detection_evaluate_param=det_eval_param,
                                             include=test_phase)
    proto = net.to_proto()
    proto.name = f"{cfg.model_name}_test"
    return proto


def build_deploy_net(cfg: SSDConfig) -> caffe_pb2.NetParameter:
    """The test net less its AnnotatedData and DetectionEvaluate layers, on an input blob."""
    proto = build_test_net(cfg)
    del proto.layer[0]
    del proto.layer[-1]
    proto.name = f"{cfg.model_name}_deploy"
    proto.input.append("data")
    proto.input_shape.add().dim.extend([1, 3, cfg.resize_height, cfg.resize_width])
    return proto


def build_solver(cfg: SSDConfig) -> caffe_pb2.SolverParameter:
    _, iter_size, solver_mode, device_id = _gpu_split(cfg)
    base_lr = cfg.base_lr
    if base_lr is None:
        # SSD's rate for batch 1 on one GPU, scaled for VALID normalization.
        base_lr = (0.0004 if cfg.use_batchnorm else 0.00004) * 25.0 / cfg.loc_weight
    return caffe_pb2.SolverParameter(
        train_net=f"{cfg.save_dir}/train.prototxt",
        test_net=[f"{cfg.save_dir}/test.prototxt"],
        snapshot_prefix=f"{cfg.save_dir}/{cfg.model_name}",
        base_lr=base_lr, weight_decay=cfg.weight_decay, lr_policy="multistep",
        stepvalue=cfg.stepvalue, gamma=0.1, momentum=0.9, iter_size=iter_size,
        max_iter=cfg.max_iter, snapshot=cfg.snapshot, display=cfg.display, average_loss=10,
        type=cfg.solver_type, solver_mode=solver_mode, device_id=device_id, debug_info=False,
        snapshot_after_train=True,
        test_iter=[int(math.ceil(cfg.num_test_image / cfg.test_batch_size))],
        test_interval=cfg.test_interval, eval_type="detection", ap_version=cfg.ap_version,
        test_initialization=False)


def write_all(cfg: SSDConfig, root: str = ".") -> dict[str, str]:
    """Write train/test/deploy prototxts and the solver under ``root/<save_dir>``; paths in the
    solver are relative to ``root``, where ``caffe train`` is to run (SSD's CAFFE_ROOT)."""
    save_dir = os.path.join(root, cfg.save_dir)
    os.makedirs(save_dir, exist_ok=True)
    files = {}
    for kind, proto in (("train", build_train_net(cfg)), ("test", build_test_net(cfg)),
                        ("deploy", build_deploy_net(cfg)), ("solver", build_solver(cfg))):
        path = os.path.join(save_dir, f"{kind}.prototxt")
        with open(path, "w") as f:
            f.write(str(proto))
        files[kind] = path
    return files


if __name__ == "__main__":
    for kind, path in write_all(SSDConfig(), sys.argv[1] if len(sys.argv) > 1 else ".").items():
        print(f"{kind}: {path}")
