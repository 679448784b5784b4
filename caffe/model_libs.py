"""Net builders of the SSD fork (weiliu89/caffe, ``python/caffe/model_libs.py``), on NetSpec.

Scripts in the style of SSD's ``examples/ssd/ssd_pascal.py`` do ``from caffe.model_libs import
*`` and call these with a ``caffe.NetSpec``: each builder adds named tops to the net, so that
``net.to_proto()`` gives the prototxt the fork's own library writes for the same arguments
(same layer names, types, bottoms, tops and parameters). Names and signatures are the fork's,
including its CamelCase and its list defaults. Python 3 only: where the fork relied on Python
2's integer ``/`` (paddings from dilations), integer division is used.

Besides the fork's bodies (VGG16, ZF, ResNet-101/152, Inception-v3) this module has
MobileNet-v1 builders that lay out nets as chuanqi305/MobileNet-SSD's ``gen.py`` writes them
(``conv0``, ``conv1/dw``, ``conv1/dw/bn``, ``conv1/dw/scale``, ``conv1/dw/relu``, ...), whose
deploy form is ``MobileNetSSD_deploy.prototxt``.
"""

from __future__ import annotations

import os
from typing import Any

import caffe
from caffe.net_spec import NetSpec, Top
from caffe.net_spec import layers as L
from caffe.net_spec import params as P
from caffe.proto import caffe_pb2

# ``from caffe.model_libs import *`` gives what the fork's module-level imports gave its
# scripts (caffe, os, L, P, caffe_pb2) besides the builders.
__all__ = [
    "caffe", "os", "L", "P", "caffe_pb2", "check_if_exist", "make_if_not_exist", "UnpackVariable",
    "ConvBNLayer", "ResBody", "InceptionTower", "CreateAnnotatedDataLayer", "ZFNetBody",
    "VGGNetBody", "ResNet101Body", "ResNet152Body", "InceptionV3Body", "CreateMultiBoxHead",
    "MobileNetConvLayer", "MobileNetBody", "AddMobileNetExtraLayers", "MobileNetSSDAnchors",
    "CreateMobileNetSSDHead",
]

# The fork's parameter sets, as dict factories (callers may mutate what they get).


def _learned_conv() -> dict[str, Any]:
    """Convolution with bias: weights lr 1 / decay 1, bias lr 2 / decay 0, xavier, bias 0."""
    return {"param": [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
            "weight_filler": dict(type="xavier"),
            "bias_filler": dict(type="constant", value=0)}


def _frozen_params() -> list[dict[str, int]]:
    return [dict(lr_mult=0, decay_mult=0), dict(lr_mult=0, decay_mult=0)]


def _stat_params() -> list[dict[str, int]]:
    """BatchNorm's three statistics blobs (mean, variance, moving-average factor): not learned."""
    return [dict(lr_mult=0, decay_mult=0) for _ in range(3)]


def _dilated_pad(kernel_size: int, dilation: int) -> int:
    """The 'same' padding of a dilated odd kernel: (effective extent - 1) / 2."""
    return (kernel_size + (dilation - 1) * (kernel_size - 1) - 1) // 2


def check_if_exist(path: str) -> bool:
    """Whether ``path`` exists (SSD's model_libs helper)."""
    return os.path.exists(path)


def make_if_not_exist(path: str) -> None:
    """Create directory ``path`` and its parents when missing (SSD's model_libs helper)."""
    if not os.path.exists(path):
        os.makedirs(path)


def UnpackVariable(var: Any, num: int) -> list:
    """``var`` as a list of ``num`` values: a list of that length as is, a one-item list or a
    scalar repeated (the fork's helper for ``kernel_size=[kh, kw]`` versus ``kernel_size=3``)."""
    if isinstance(var, list) and len(var) == num:
        return var
    if isinstance(var, list):
        if len(var) != 1:
            raise ValueError(f"UnpackVariable: expected 1 or {num} values, got {var!r}")
        var = var[0]
    return [var] * num


def ConvBNLayer(net: NetSpec, from_layer: str, out_layer: str, use_bn: bool, use_relu: bool,
                num_output: int, kernel_size, pad, stride, dilation: int = 1,
                use_scale: bool = True, lr_mult: float = 1, conv_prefix: str = "",
                conv_postfix: str = "", bn_prefix: str = "", bn_postfix: str = "_bn",
                scale_prefix: str = "", scale_postfix: str = "_scale", bias_prefix: str = "",
                bias_postfix: str = "_bias", **bn_params: Any) -> None:
    """Convolution ``<conv_prefix><out_layer><conv_postfix>``, then (``use_bn``) an in-place
    BatchNorm and Scale (or Bias when ``not use_scale``), then (``use_relu``) an in-place ReLU
    named ``<conv name>_relu``.

    With batch norm the convolution has no bias term and gaussian(0.01) weights; without, it
    has a bias and xavier weights. ``bn_params`` may hold ``eps`` (0.001),
    ``moving_average_fraction`` (0.999) and ``use_global_stats``; when the latter is true the
    BatchNorm states it (instead of following the phase) and the Scale/Bias is frozen.
    ``kernel_size``, ``pad`` and ``stride`` take a scalar or an ``[h, w]`` pair.
    """
    eps = bn_params.get("eps", 0.001)
    use_global_stats = bn_params.get("use_global_stats", False)
    if use_bn:
        conv_kwargs = {"param": [dict(lr_mult=lr_mult, decay_mult=1)],
                       "weight_filler": dict(type="gaussian", std=0.01),
                       "bias_term": False}
        bn_kwargs: dict[str, Any] = {"param": _stat_params(), "eps": eps}
        if use_global_stats:
            bn_kwargs["use_global_stats"] = use_global_stats
            affine_lr = 0
        else:
            bn_kwargs["moving_average_fraction"] = bn_params.get("moving_average_fraction",
                                                                 0.999)
            affine_lr = lr_mult
    else:
        conv_kwargs = {"param": [dict(lr_mult=lr_mult, decay_mult=1),
                                 dict(lr_mult=2 * lr_mult, decay_mult=0)],
                       "weight_filler": dict(type="xavier"),
                       "bias_filler": dict(type="constant", value=0)}

    conv_name = f"{conv_prefix}{out_layer}{conv_postfix}"
    kernel_h, kernel_w = UnpackVariable(kernel_size, 2)
    pad_h, pad_w = UnpackVariable(pad, 2)
    stride_h, stride_w = UnpackVariable(stride, 2)
    if kernel_h == kernel_w:
        net[conv_name] = L.Convolution(net[from_layer], num_output=num_output,
                                       kernel_size=kernel_h, pad=pad_h, stride=stride_h,
                                       **conv_kwargs)
    else:
        net[conv_name] = L.Convolution(net[from_layer], num_output=num_output,
                                       kernel_h=kernel_h, kernel_w=kernel_w, pad_h=pad_h,
                                       pad_w=pad_w, stride_h=stride_h, stride_w=stride_w,
                                       **conv_kwargs)
    if dilation > 1:
        net.update(conv_name, {"dilation": dilation})
    if use_bn:
        bn_name = f"{bn_prefix}{out_layer}{bn_postfix}"
        net[bn_name] = L.BatchNorm(net[conv_name], in_place=True, **bn_kwargs)
        affine_params = dict(lr_mult=affine_lr, decay_mult=0)
        if use_scale:
            net[f"{scale_prefix}{out_layer}{scale_postfix}"] = L.Scale(
                net[bn_name], in_place=True, bias_term=True,
                param=[affine_params, dict(affine_params)],
                filler=dict(type="constant", value=1.0),
                bias_filler=dict(type="constant", value=0.0))
        else:
            net[f"{bias_prefix}{out_layer}{bias_postfix}"] = L.Bias(
                net[bn_name], in_place=True, param=[affine_params],
                filler=dict(type="constant", value=0.0))
    if use_relu:
        net[f"{conv_name}_relu"] = L.ReLU(net[conv_name], in_place=True)


def ResBody(net: NetSpec, from_layer: str, block_name: str, out2a: int, out2b: int, out2c: int,
            stride: int, use_branch1: bool, dilation: int = 1, **bn_param: Any) -> None:
    """One bottleneck block of He et al.'s ResNet, named as their released prototxts:
    ``res<block>_branch1`` (projection, when ``use_branch1``), ``res<block>_branch2a/b/c``
    (1x1, 3x3, 1x1; the stride on 2a), each with ``bn<block>_*`` and ``scale<block>_*``, the
    sum ``res<block>`` and its ReLU ``res<block>_relu``."""
    names = dict(conv_prefix=f"res{block_name}_", conv_postfix="",
                 bn_prefix=f"bn{block_name}_", bn_postfix="",
                 scale_prefix=f"scale{block_name}_", scale_postfix="", use_scale=True)
    conv_prefix = names["conv_prefix"]
    if use_branch1:
        ConvBNLayer(net, from_layer, "branch1", use_bn=True, use_relu=False, num_output=out2c,
                    kernel_size=1, pad=0, stride=stride, **names, **bn_param)
        branch1 = f"{conv_prefix}branch1"
    else:
        branch1 = from_layer
    ConvBNLayer(net, from_layer, "branch2a", use_bn=True, use_relu=True, num_output=out2a,
                kernel_size=1, pad=0, stride=stride, **names, **bn_param)
    if dilation == 1:
        ConvBNLayer(net, f"{conv_prefix}branch2a", "branch2b", use_bn=True, use_relu=True,
                    num_output=out2b, kernel_size=3, pad=1, stride=1, **names, **bn_param)
    else:
        ConvBNLayer(net, f"{conv_prefix}branch2a", "branch2b", use_bn=True, use_relu=True,
                    num_output=out2b, kernel_size=3, pad=_dilated_pad(3, dilation), stride=1,
                    dilation=dilation, **names, **bn_param)
    ConvBNLayer(net, f"{conv_prefix}branch2b", "branch2c", use_bn=True, use_relu=False,
                num_output=out2c, kernel_size=1, pad=0, stride=1, **names, **bn_param)
    res_name = f"res{block_name}"
    net[res_name] = L.Eltwise(net[branch1], net[f"{conv_prefix}branch2c"])
    net[f"{res_name}_relu"] = L.ReLU(net[res_name], in_place=True)


def InceptionTower(net: NetSpec, from_layer: str, tower_name: str,
                   layer_params: list[dict[str, Any]], **bn_param: Any) -> Top:
    """A chain of layers ``<tower_name>/<name>``: a Pooling when the layer's full name contains
    'pool', else a ConvBNLayer with batch norm, a Bias instead of a Scale, and ReLU. Returns the
    last top. (The fork deletes 'name' from the caller's dicts; this copies them.)"""
    for spec in layer_params:
        spec = dict(spec)
        tower_layer = f"{tower_name}/{spec.pop('name')}"
        if "pool" in tower_layer:
            net[tower_layer] = L.Pooling(net[from_layer], **spec)
        else:
            spec.update(bn_param)
            ConvBNLayer(net, from_layer, tower_layer, use_bn=True, use_relu=True,
                        use_scale=False, **spec)
        from_layer = tower_layer
    return net[from_layer]


def CreateAnnotatedDataLayer(source: str, batch_size: int = 32, backend: int = P.Data.LMDB,
                             output_label: bool = True, train: bool = True,
                             label_map_file: str = "", anno_type: int | None = None,
                             transform_param: dict | None = None,
                             batch_sampler: list[dict] | None = None):
    """The ``AnnotatedData`` layer named "data" for the TRAIN (``train``) or TEST phase:
    (data, label) tops, or data alone without ``output_label``. ``batch_sampler`` defaults to
    one empty sampler (the whole image), ``transform_param`` to none."""
    phase = caffe_pb2.Phase.Value("TRAIN" if train else "TEST")
    annotated_data_param: dict[str, Any] = {
        "label_map_file": label_map_file,
        "batch_sampler": [{}] if batch_sampler is None else batch_sampler,
    }
    if anno_type is not None:
        annotated_data_param["anno_type"] = anno_type
    return L.AnnotatedData(name="data", annotated_data_param=annotated_data_param,
                           data_param=dict(batch_size=batch_size, backend=backend,
                                           source=source),
                           ntop=2 if output_label else 1, include=dict(phase=phase),
                           transform_param={} if transform_param is None else transform_param)


def _freeze(net: NetSpec, freeze_layers: list[str], conv_kwargs: dict[str, Any]) -> None:
    """Set lr_mult = decay_mult = 0 on the named layers (fillers restated, as the fork does)."""
    conv_kwargs = dict(conv_kwargs, param=_frozen_params())
    for name in freeze_layers:
        if name in net:
            net.update(name, conv_kwargs)


def _fully_connected_head(net: NetSpec, bottom: str, fully_conv: bool, reduced: bool,
                          dropout: bool, fc6: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """fc6 / relu6 (/ drop6) / fc7 / relu7 (/ drop7) of VGG and ZF; ``fc6`` holds the fully
    convolutional fc6's kernel, pad and dilation."""
    width = 1024 if reduced else 4096
    if fully_conv:
        net.fc6 = L.Convolution(net[bottom], **fc6, **kwargs)
    else:
        net.fc6 = L.InnerProduct(net[bottom], num_output=4096)
    net.relu6 = L.ReLU(net.fc6, in_place=True)
    if dropout:
        net.drop6 = L.Dropout(net.relu6, dropout_ratio=0.5, in_place=True)
    if fully_conv:
        net.fc7 = L.Convolution(net.relu6, num_output=width, kernel_size=1, **kwargs)
    else:
        net.fc7 = L.InnerProduct(net.relu6, num_output=4096)
    net.relu7 = L.ReLU(net.fc7, in_place=True)
    if dropout:
        net.drop7 = L.Dropout(net.relu7, dropout_ratio=0.5, in_place=True)


def ZFNetBody(net: NetSpec, from_layer: str, need_fc: bool = True, fully_conv: bool = False,
              reduced: bool = False, dilated: bool = False, dropout: bool = True,
              need_fc8: bool = False, freeze_layers: list[str] = []) -> NetSpec:  # noqa: B006
    """Zeiler & Fergus' net (conv1-5 with LRN), optionally fc6/fc7 (fully convolutional,
    ``reduced`` to 1024 channels, ``dilated``), fc8 + prob, and frozen ``freeze_layers``."""
    kwargs = _learned_conv()
    assert from_layer in net.keys()
    lrn = dict(local_size=3, alpha=0.00005, beta=0.75, norm_region=P.LRN.WITHIN_CHANNEL,
               engine=P.LRN.CAFFE)
    net.conv1 = L.Convolution(net[from_layer], num_output=96, pad=3, kernel_size=7, stride=2,
                              **kwargs)
    net.relu1 = L.ReLU(net.conv1, in_place=True)
    net.norm1 = L.LRN(net.relu1, **lrn)
    net.pool1 = L.Pooling(net.norm1, pool=P.Pooling.MAX, pad=1, kernel_size=3, stride=2)
    net.conv2 = L.Convolution(net.pool1, num_output=256, pad=2, kernel_size=5, stride=2,
                              **kwargs)
    net.relu2 = L.ReLU(net.conv2, in_place=True)
    net.norm2 = L.LRN(net.relu2, **lrn)
    net.pool2 = L.Pooling(net.norm2, pool=P.Pooling.MAX, pad=1, kernel_size=3, stride=2)
    previous = "pool2"
    for index, width in ((3, 384), (4, 384), (5, 256)):
        net[f"conv{index}"] = L.Convolution(net[previous], num_output=width, pad=1,
                                            kernel_size=3, **kwargs)
        net[f"relu{index}"] = L.ReLU(net[f"conv{index}"], in_place=True)
        previous = f"relu{index}"

    if need_fc:
        net.pool5 = L.Pooling(net.relu5, pool=P.Pooling.MAX, pad=1, kernel_size=3,
                              stride=1 if dilated else 2)
        if dilated:
            fc6 = (dict(num_output=1024, pad=5, kernel_size=3, dilation=5) if reduced
                   else dict(num_output=4096, pad=5, kernel_size=6, dilation=2))
        else:
            fc6 = (dict(num_output=1024, pad=2, kernel_size=3, dilation=2) if reduced
                   else dict(num_output=4096, pad=2, kernel_size=6))
        _fully_connected_head(net, "pool5", fully_conv, reduced, dropout, fc6, kwargs)
    if need_fc8:
        last = net.keys()[-1]
        if fully_conv:
            net.fc8 = L.Convolution(net[last], num_output=1000, kernel_size=1, **kwargs)
        else:
            net.fc8 = L.InnerProduct(net[last], num_output=1000)
        net.prob = L.Softmax(net.fc8)
    _freeze(net, freeze_layers, kwargs)
    return net


# VGG16's convolution blocks: (block, convolutions, channels).
_VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def VGGNetBody(net: NetSpec, from_layer: str, need_fc: bool = True, fully_conv: bool = False,
               reduced: bool = False, dilated: bool = False, nopool: bool = False,
               dropout: bool = True, freeze_layers: list[str] = [],  # noqa: B006
               dilate_pool4: bool = False) -> NetSpec:
    """VGG16 (conv1_1 ... conv5_3 with relus and pools), as SSD uses it.

    ``nopool`` replaces pool1-5 by stride-2 convolutions ``conv<k>_<n+1>``; ``dilate_pool4``
    makes pool4 3x3 stride 1 and dilates conv5_* by 2. With ``need_fc``: pool5 (3x3 stride 1
    when ``dilated``), then fc6/fc7 (``fully_conv``: as convolutions; ``reduced``: 1024 wide
    with a 3x3 fc6 dilated 3 (6 when ``dilated``), SSD's "fc_reduced" atrous VGG).
    """
    kwargs = _learned_conv()
    assert from_layer in net.keys()
    bottom = from_layer
    dilation = 1
    for block, count, width in _VGG16_BLOCKS:
        conv = dict(num_output=width, pad=1, kernel_size=3)
        if block == 5:
            conv = dict(num_output=width, pad=_dilated_pad(3, dilation), kernel_size=3,
                        dilation=dilation)
        for index in range(1, count + 1):
            net[f"conv{block}_{index}"] = L.Convolution(net[bottom], **conv, **kwargs)
            net[f"relu{block}_{index}"] = L.ReLU(net[f"conv{block}_{index}"], in_place=True)
            bottom = f"relu{block}_{index}"
        if block == 5:
            break
        if nopool:
            name = f"conv{block}_{count + 1}"
            net[name] = L.Convolution(net[bottom], num_output=width, pad=1, kernel_size=3,
                                      stride=2, **kwargs)
        else:
            name = f"pool{block}"
            if block == 4 and dilate_pool4:
                net[name] = L.Pooling(net[bottom], pool=P.Pooling.MAX, kernel_size=3,
                                      stride=1, pad=1)
                dilation = 2
            else:
                net[name] = L.Pooling(net[bottom], pool=P.Pooling.MAX, kernel_size=2,
                                      stride=2)
        bottom = name

    if need_fc:
        if nopool:
            name = "conv5_4"
            net[name] = L.Convolution(net.relu5_3, num_output=512, pad=1, kernel_size=3,
                                      stride=1 if dilated else 2, **kwargs)
        elif dilated:
            name = "pool5"
            net[name] = L.Pooling(net.relu5_3, pool=P.Pooling.MAX, pad=1, kernel_size=3,
                                  stride=1)
        else:
            name = "pool5"
            net[name] = L.Pooling(net.relu5_3, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        if reduced:
            fc6_dilation, kernel_size, num_output = dilation * (6 if dilated else 3), 3, 1024
        else:
            fc6_dilation, kernel_size, num_output = dilation * (2 if dilated else 1), 7, 4096
        fc6 = dict(num_output=num_output, pad=_dilated_pad(kernel_size, fc6_dilation),
                   kernel_size=kernel_size, dilation=fc6_dilation)
        # The fork's InnerProduct fc6 reads pool5 whatever the pooling flags.
        _fully_connected_head(net, name if fully_conv else "pool5", fully_conv, reduced,
                              dropout, fc6, kwargs)
    _freeze(net, freeze_layers, kwargs)
    return net


def _resnet_body(net: NetSpec, from_layer: str, blocks3: int, blocks4: int, use_pool5: bool,
                 use_dilation_conv5: bool, bn_param: dict[str, Any]) -> NetSpec:
    """conv1 + pool1, res2a-c, res3a + res3b1.., res4a + res4b1.., res5a-c (+ pool5), with
    ``blocks3`` and ``blocks4`` 'b' blocks in stages 3 and 4."""
    ConvBNLayer(net, from_layer, "conv1", use_bn=True, use_relu=True, num_output=64,
                kernel_size=7, pad=3, stride=2, conv_prefix="", conv_postfix="",
                bn_prefix="bn_", bn_postfix="", scale_prefix="scale_", scale_postfix="",
                **bn_param)
    net.pool1 = L.Pooling(net.conv1, pool=P.Pooling.MAX, kernel_size=3, stride=2)

    ResBody(net, "pool1", "2a", out2a=64, out2b=64, out2c=256, stride=1, use_branch1=True,
            **bn_param)
    ResBody(net, "res2a", "2b", out2a=64, out2b=64, out2c=256, stride=1, use_branch1=False,
            **bn_param)
    ResBody(net, "res2b", "2c", out2a=64, out2b=64, out2c=256, stride=1, use_branch1=False,
            **bn_param)
    bottom = "res2c"
    for stage, width, count in ((3, 128, blocks3), (4, 256, blocks4)):
        ResBody(net, bottom, f"{stage}a", out2a=width, out2b=width, out2c=4 * width, stride=2,
                use_branch1=True, **bn_param)
        bottom = f"res{stage}a"
        for index in range(1, count + 1):
            block = f"{stage}b{index}"
            ResBody(net, bottom, block, out2a=width, out2b=width, out2c=4 * width, stride=1,
                    use_branch1=False, **bn_param)
            bottom = f"res{block}"

    stride, dilation = (1, 2) if use_dilation_conv5 else (2, 1)
    ResBody(net, bottom, "5a", out2a=512, out2b=512, out2c=2048, stride=stride,
            use_branch1=True, dilation=dilation, **bn_param)
    ResBody(net, "res5a", "5b", out2a=512, out2b=512, out2c=2048, stride=1, use_branch1=False,
            dilation=dilation, **bn_param)
    ResBody(net, "res5b", "5c", out2a=512, out2b=512, out2c=2048, stride=1, use_branch1=False,
            dilation=dilation, **bn_param)
    if use_pool5:
        net.pool5 = L.Pooling(net.res5c, pool=P.Pooling.AVE, global_pooling=True)
    return net


def ResNet101Body(net: NetSpec, from_layer: str, use_pool5: bool = True,
                  use_dilation_conv5: bool = False, **bn_param: Any) -> NetSpec:
    """ResNet-101 (3, 4, 23, 3 bottleneck blocks), named as MSRA's released prototxt."""
    return _resnet_body(net, from_layer, 3, 22, use_pool5, use_dilation_conv5, bn_param)


def ResNet152Body(net: NetSpec, from_layer: str, use_pool5: bool = True,
                  use_dilation_conv5: bool = False, **bn_param: Any) -> NetSpec:
    """ResNet-152 (3, 8, 36, 3 bottleneck blocks), named as MSRA's released prototxt."""
    return _resnet_body(net, from_layer, 7, 35, use_pool5, use_dilation_conv5, bn_param)


def _conv(name: str, num_output: int, kernel_size, pad, stride=1) -> dict[str, Any]:
    return dict(name=name, num_output=num_output, kernel_size=kernel_size, pad=pad,
                stride=stride)


def _pool(pool: int, pad: int, stride: int) -> dict[str, Any]:
    return dict(name="pool", pool=pool, kernel_size=3, pad=pad, stride=stride)


def _join(net: NetSpec, out_layer: str, towers: list[Top]) -> str:
    name = f"{out_layer}/join"
    net[name] = L.Concat(*towers, axis=1)
    return name


def InceptionV3Body(net: NetSpec, from_layer: str, output_pred: bool = False,
                    **bn_param: Any) -> NetSpec:
    """Inception-v3 as converted from TensorFlow's release (``conv``, ``conv_1``, ...,
    ``mixed``, ``mixed_1`` ... ``mixed_10`` with ``/tower*`` branches and ``/join`` concats);
    batch norm without scale. ``output_pred`` adds pool_3, the 1008-way softmax and its prob.
    """
    def tower(name: str, bottom: str, specs: list[dict[str, Any]]) -> Top:
        return InceptionTower(net, bottom, name, specs, **bn_param)

    stem = ((_conv("conv", 32, 3, 0, 2)), _conv("conv_1", 32, 3, 0), _conv("conv_2", 64, 3, 1),
            "pool", _conv("conv_3", 80, 1, 0), _conv("conv_4", 192, 3, 0), "pool_1")
    for spec in stem:
        if isinstance(spec, str):
            net[spec] = L.Pooling(net[from_layer], pool=P.Pooling.MAX, kernel_size=3, stride=2,
                                  pad=0)
            from_layer = spec
            continue
        spec = dict(spec)
        name = spec.pop("name")
        ConvBNLayer(net, from_layer, name, use_bn=True, use_relu=True, use_scale=False,
                    **spec, **bn_param)
        from_layer = name

    # 1x1, 5x5 and double 3x3 branches.
    for index, pool_width in ((0, 32), (1, 64), (2, 64)):
        out = "mixed" if index == 0 else f"mixed_{index}"
        towers = [
            tower(out, from_layer, [_conv("conv", 64, 1, 0)]),
            tower(f"{out}/tower", from_layer, [_conv("conv", 48, 1, 0),
                                               _conv("conv_1", 64, 5, 2)]),
            tower(f"{out}/tower_1", from_layer, [_conv("conv", 64, 1, 0),
                                                 _conv("conv_1", 96, 3, 1),
                                                 _conv("conv_2", 96, 3, 1)]),
            tower(f"{out}/tower_2", from_layer, [_pool(P.Pooling.AVE, 1, 1),
                                                 _conv("conv", pool_width, 1, 0)]),
        ]
        from_layer = _join(net, out, towers)

    # Grid reduction 35 -> 17.
    out = "mixed_3"
    towers = [
        tower(out, from_layer, [_conv("conv", 384, 3, 0, 2)]),
        tower(f"{out}/tower", from_layer, [_conv("conv", 64, 1, 0), _conv("conv_1", 96, 3, 1),
                                           _conv("conv_2", 96, 3, 0, 2)]),
        tower(out, from_layer, [_pool(P.Pooling.MAX, 0, 2)]),
    ]
    from_layer = _join(net, out, towers)

    # Factorised 7x7 branches.
    for index, width in ((4, 128), (5, 160), (6, 160), (7, 192)):
        out = f"mixed_{index}"
        row = dict(kernel_size=[1, 7], pad=[0, 3], stride=[1, 1])
        col = dict(kernel_size=[7, 1], pad=[3, 0], stride=[1, 1])
        towers = [
            tower(out, from_layer, [_conv("conv", 192, 1, 0)]),
            tower(f"{out}/tower", from_layer, [
                _conv("conv", width, 1, 0), dict(name="conv_1", num_output=width, **row),
                dict(name="conv_2", num_output=192, **col)]),
            tower(f"{out}/tower_1", from_layer, [
                _conv("conv", width, 1, 0), dict(name="conv_1", num_output=width, **col),
                dict(name="conv_2", num_output=width, **row),
                dict(name="conv_3", num_output=width, **col),
                dict(name="conv_4", num_output=192, **row)]),
            tower(f"{out}/tower_2", from_layer, [_pool(P.Pooling.AVE, 1, 1),
                                                 _conv("conv", 192, 1, 0)]),
        ]
        from_layer = _join(net, out, towers)

    # Grid reduction 17 -> 8.
    out = "mixed_8"
    towers = [
        tower(f"{out}/tower", from_layer, [_conv("conv", 192, 1, 0),
                                           _conv("conv_1", 320, 3, 0, 2)]),
        tower(f"{out}/tower_1", from_layer, [
            _conv("conv", 192, 1, 0),
            dict(name="conv_1", num_output=192, kernel_size=[1, 7], pad=[0, 3], stride=[1, 1]),
            dict(name="conv_2", num_output=192, kernel_size=[7, 1], pad=[3, 0], stride=[1, 1]),
            _conv("conv_3", 192, 3, 0, 2)]),
        tower(out, from_layer, [_pool(P.Pooling.MAX, 0, 2)]),
    ]
    from_layer = _join(net, out, towers)

    # Expanded filter banks with 1x3 / 3x1 splits.
    def split(name: str, bottom: str) -> Top:
        branches = [
            tower(name, bottom, [dict(name="conv", num_output=384, kernel_size=[1, 3],
                                      pad=[0, 1], stride=[1, 1])]),
            tower(name, bottom, [dict(name="conv_1", num_output=384, kernel_size=[3, 1],
                                      pad=[1, 0], stride=[1, 1])]),
        ]
        net[name] = L.Concat(*branches, axis=1)
        return net[name]

    for index, pool in ((9, P.Pooling.AVE), (10, P.Pooling.MAX)):
        out = f"mixed_{index}"
        towers = [tower(out, from_layer, [_conv("conv", 320, 1, 0)])]
        tower(f"{out}/tower", from_layer, [_conv("conv", 384, 1, 0)])
        towers.append(split(f"{out}/tower/mixed", f"{out}/tower/conv"))
        tower(f"{out}/tower_1", from_layer, [_conv("conv", 448, 1, 0),
                                             _conv("conv_1", 384, 3, 1)])
        towers.append(split(f"{out}/tower_1/mixed", f"{out}/tower_1/conv_1"))
        towers.append(tower(f"{out}/tower_2", from_layer, [_pool(pool, 1, 1),
                                                           _conv("conv", 192, 1, 0)]))
        from_layer = _join(net, out, towers)

    if output_pred:
        net.pool_3 = L.Pooling(net[from_layer], pool=P.Pooling.AVE, kernel_size=8, pad=0,
                               stride=1)
        net.softmax = L.InnerProduct(net.pool_3, num_output=1008)
        net.softmax_prob = L.Softmax(net.softmax)
    return net


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _prediction(net: NetSpec, from_layer: str, name: str, num_output: int,
                conv: dict[str, Any]) -> Top:
    """A prediction convolution ``name`` on ``from_layer`` and its NHWC flattening
    (``<name>_perm``, ``<name>_flat``); returns the flat top."""
    ConvBNLayer(net, from_layer, name, use_relu=False, num_output=num_output, stride=1, **conv)
    net[f"{name}_perm"] = L.Permute(net[name], order=[0, 2, 3, 1])
    net[f"{name}_flat"] = L.Flatten(net[f"{name}_perm"], axis=1)
    return net[f"{name}_flat"]


def CreateMultiBoxHead(net: NetSpec, data_layer: str = "data",
                       num_classes: int = [],  # type: ignore[assignment]  # noqa: B006
                       from_layers: list[str] = [], use_objectness: bool = False,  # noqa: B006
                       normalizations: list[float] = [], use_batchnorm: bool = True,  # noqa: B006
                       lr_mult: float = 1, use_scale: bool = True,
                       min_sizes: list = [], max_sizes: list = [],  # noqa: B006
                       prior_variance: list[float] = [0.1],  # noqa: B006
                       aspect_ratios: list = [], steps: list = [],  # noqa: B006
                       img_height: int = 0, img_width: int = 0, share_location: bool = True,
                       flip: bool = True, clip: bool = True, offset: float = 0.5,
                       inter_layer_depth: list[int] = [], kernel_size=1, pad=0,  # noqa: B006
                       conf_postfix: str = "", loc_postfix: str = "",
                       **bn_param: Any) -> list[Top]:
    """SSD's multibox head on ``from_layers``: per source layer an optional L2 ``Normalize``
    (``<layer>_norm``, scale ``normalizations[i]``; -1 for none), an optional 3x3
    intermediate conv (``<layer>_inter``), location and confidence convolutions
    (``<layer>_mbox_loc``/``_mbox_conf`` with ``_perm`` and ``_flat``), a ``PriorBox``
    (``<layer>_mbox_priorbox``) and, with ``use_objectness``, a 2-way objectness prediction.
    Returns the concatenated ``[mbox_loc, mbox_conf, mbox_priorbox(, mbox_objectness)]``.

    Priors per location: ``(1 + len(aspect_ratio))`` per min size (one more with a max size),
    plus ``len(aspect_ratio)`` more with ``flip``. ``use_scale`` is accepted as the fork
    accepts it and, as there, unused.
    """
    assert num_classes, "must provide num_classes"
    assert num_classes > 0, "num_classes must be positive number"
    for name, values in (("normalizations", normalizations), ("max_sizes", max_sizes),
                         ("aspect_ratios", aspect_ratios), ("steps", steps),
                         ("inter_layer_depth", inter_layer_depth)):
        if values:
            assert len(from_layers) == len(values), \
                f"from_layers and {name} should have same length"
    assert len(from_layers) == len(min_sizes), "from_layers and min_sizes should have same length"
    assert data_layer in net.keys(), "data_layer is not in net's layers"

    conv = dict(use_bn=use_batchnorm, lr_mult=lr_mult, kernel_size=kernel_size, pad=pad,
                **bn_param)
    loc_layers, conf_layers, priorbox_layers, objectness_layers = [], [], [], []
    for i, from_layer in enumerate(from_layers):
        if normalizations and normalizations[i] != -1:
            norm_name = f"{from_layer}_norm"
            net[norm_name] = L.Normalize(
                net[from_layer], scale_filler=dict(type="constant", value=normalizations[i]),
                across_spatial=False, channel_shared=False)
            from_layer = norm_name
        if inter_layer_depth and inter_layer_depth[i] > 0:
            inter_name = f"{from_layer}_inter"
            ConvBNLayer(net, from_layer, inter_name, use_bn=use_batchnorm, use_relu=True,
                        lr_mult=lr_mult, num_output=inter_layer_depth[i], kernel_size=3,
                        pad=1, stride=1, **bn_param)
            from_layer = inter_name

        min_size = _as_list(min_sizes[i])
        aspect_ratio = _as_list(aspect_ratios[i]) if len(aspect_ratios) > i else []
        max_size = _as_list(max_sizes[i]) if len(max_sizes) > i else []
        if max_size:
            assert len(max_size) == len(min_size), \
                "max_size and min_size should have same length."
        num_priors = (2 if max_size else 1) + len(aspect_ratio)
        if flip:
            num_priors += len(aspect_ratio)
        num_priors *= len(min_size)
        step = steps[i] if len(steps) > i else []

        num_loc = num_priors * 4 * (1 if share_location else num_classes)
        loc_layers.append(_prediction(net, from_layer, f"{from_layer}_mbox_loc{loc_postfix}",
                                      num_loc, conv))
        conf_layers.append(_prediction(net, from_layer,
                                       f"{from_layer}_mbox_conf{conf_postfix}",
                                       num_priors * num_classes, conv))

        name = f"{from_layer}_mbox_priorbox"
        net[name] = L.PriorBox(net[from_layer], net[data_layer], min_size=min_size, clip=clip,
                               variance=prior_variance, offset=offset)
        if max_size:
            net.update(name, {"max_size": max_size})
        if aspect_ratio:
            net.update(name, {"aspect_ratio": aspect_ratio, "flip": flip})
        if step:
            net.update(name, {"step": step})
        if img_height != 0 and img_width != 0:
            if img_height == img_width:
                net.update(name, {"img_size": img_height})
            else:
                net.update(name, {"img_h": img_height, "img_w": img_width})
        priorbox_layers.append(net[name])

        if use_objectness:
            objectness_layers.append(_prediction(net, from_layer,
                                                 f"{from_layer}_mbox_objectness",
                                                 num_priors * 2, conv))

    net.mbox_loc = L.Concat(*loc_layers, axis=1)
    net.mbox_conf = L.Concat(*conf_layers, axis=1)
    net.mbox_priorbox = L.Concat(*priorbox_layers, axis=2)
    mbox_layers = [net.mbox_loc, net.mbox_conf, net.mbox_priorbox]
    if use_objectness:
        net.mbox_objectness = L.Concat(*objectness_layers, axis=1)
        mbox_layers.append(net.mbox_objectness)
    return mbox_layers


# MobileNet-v1 and MobileNet-SSD, laid out as chuanqi305/MobileNet-SSD's gen.py writes them.

# (name, input channels, output channels, stride) of MobileNet-v1's depthwise-separable blocks.
_MOBILENET_BLOCKS = (
    ("conv1", 32, 64, 1), ("conv2", 64, 128, 2), ("conv3", 128, 128, 1),
    ("conv4", 128, 256, 2), ("conv5", 256, 256, 1), ("conv6", 256, 512, 2),
    ("conv7", 512, 512, 1), ("conv8", 512, 512, 1), ("conv9", 512, 512, 1),
    ("conv10", 512, 512, 1), ("conv11", 512, 512, 1), ("conv12", 512, 1024, 2),
    ("conv13", 1024, 1024, 1),
)

# MobileNet-SSD's extra feature layers after conv13: (name, channels, kernel, stride).
_MOBILENET_SSD_EXTRA = (
    ("conv14_1", 256, 1, 1), ("conv14_2", 512, 3, 2), ("conv15_1", 128, 1, 1),
    ("conv15_2", 256, 3, 2), ("conv16_1", 128, 1, 1), ("conv16_2", 256, 3, 2),
    ("conv17_1", 64, 1, 1), ("conv17_2", 128, 3, 2),
)


def MobileNetConvLayer(net: NetSpec, from_layer: str, name: str, num_output: int,
                       kernel_size: int, stride: int = 1, group: int = 1, use_bn: bool = True,
                       bias_term: bool = False, use_relu: bool = True) -> str:
    """One MobileNet-SSD convolution ``name``: msra weights, pad ``kernel_size // 2``, stride
    and group (with ``engine: CAFFE``) stated only when above 1; with ``use_bn`` an in-place
    ``<name>/bn`` BatchNorm and ``<name>/scale`` Scale and no bias, without (the deploy form,
    batch norm merged into the weights) a bias; then ``<name>/relu``. Returns ``name``."""
    bias_term = bias_term or not use_bn
    conv: dict[str, Any] = dict(num_output=num_output, kernel_size=kernel_size,
                                weight_filler=dict(type="msra"))
    if kernel_size > 1:
        conv["pad"] = kernel_size // 2
    if stride > 1:
        conv["stride"] = stride
    if group > 1:
        conv.update(group=group, engine=P.Convolution.CAFFE)
    if bias_term:
        conv.update(param=[dict(lr_mult=1.0, decay_mult=1.0), dict(lr_mult=2.0, decay_mult=0.0)],
                    bias_filler=dict(type="constant", value=0.0))
    else:
        conv.update(param=[dict(lr_mult=1.0, decay_mult=1.0)], bias_term=False)
    net[name] = L.Convolution(net[from_layer], **conv)
    last = name
    if use_bn:
        net[f"{name}/bn"] = L.BatchNorm(net[name], in_place=True, param=_stat_params())
        net[f"{name}/scale"] = L.Scale(
            net[f"{name}/bn"], in_place=True, bias_term=True, filler=dict(value=1),
            bias_filler=dict(value=0),
            param=[dict(lr_mult=1.0, decay_mult=0.0), dict(lr_mult=2.0, decay_mult=0.0)])
        last = f"{name}/scale"
    if use_relu:
        net[f"{name}/relu"] = L.ReLU(net[last], in_place=True)
    return name


def MobileNetBody(net: NetSpec, from_layer: str = "data", width_multiplier: float = 1.0,
                  use_bn: bool = True) -> NetSpec:
    """MobileNet-v1's convolutions: ``conv0`` (3x3 stride 2) and the depthwise-separable
    ``conv<k>/dw`` + ``conv<k>`` blocks up to conv13, channels scaled by
    ``width_multiplier``; ``use_bn=False`` gives the deploy form with merged batch norm."""
    assert from_layer in net, f"{from_layer} is not in the net"
    bottom = MobileNetConvLayer(net, from_layer, "conv0", int(32 * width_multiplier), 3, 2,
                                use_bn=use_bn)
    for name, inputs, outputs, stride in _MOBILENET_BLOCKS:
        inputs, outputs = int(inputs * width_multiplier), int(outputs * width_multiplier)
        bottom = MobileNetConvLayer(net, bottom, f"{name}/dw", inputs, 3, stride, group=inputs,
                                    use_bn=use_bn)
        bottom = MobileNetConvLayer(net, bottom, name, outputs, 1, use_bn=use_bn)
    return net


def AddMobileNetExtraLayers(net: NetSpec, from_layer: str = "conv13",
                            use_bn: bool = True) -> NetSpec:
    """MobileNet-SSD's extra feature layers conv14_1 ... conv17_2 (10, 5, 3, 1 pixels at 300)."""
    for name, width, kernel_size, stride in _MOBILENET_SSD_EXTRA:
        from_layer = MobileNetConvLayer(net, from_layer, name, width, kernel_size, stride,
                                        use_bn=use_bn)
    return net


def MobileNetSSDAnchors(num_layers: int = 6, min_scale: float = 0.2,
                        max_scale: float = 0.95) -> list[tuple[float, float]]:
    """(min, max) prior scales per source layer, spaced evenly as TensorFlow's SSD anchors are
    (the last max is 1.0); MobileNet-SSD's gen.py uses the defaults."""
    scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1)
              for i in range(num_layers)] + [1.0]
    return list(zip(scales[:-1], scales[1:]))


def CreateMobileNetSSDHead(net: NetSpec, data_layer: str = "data", num_classes: int = 21,
                           from_layers: tuple[str, ...] = ("conv11", "conv13", "conv14_2",
                                                           "conv15_2", "conv16_2",
                                                           "conv17_2"),
                           input_size: int = 300, min_scale: float = 0.2,
                           max_scale: float = 0.95) -> list[Top]:
    """MobileNet-SSD's head: per source layer 1x1 loc/conf convolutions (with bias, msra) with
    ``_perm``/``_flat``, and a PriorBox (first layer: min size only, aspect ratio 2; others:
    min and max, aspect ratios 2 and 3; flipped, unclipped, variances 0.1/0.1/0.2/0.2).
    Returns ``[mbox_loc, mbox_conf, mbox_priorbox]``."""
    anchors = MobileNetSSDAnchors(len(from_layers), min_scale, max_scale)
    loc_layers, conf_layers, priorbox_layers = [], [], []
    for index, (bottom, (low, high)) in enumerate(zip(from_layers, anchors)):
        aspect_ratio = [2.0] if index == 0 else [2.0, 3.0]
        num_priors = (1 if index == 0 else 2) + 2 * len(aspect_ratio)
        for kind, width, out in (("loc", 4, loc_layers), ("conf", num_classes, conf_layers)):
            name = f"{bottom}_mbox_{kind}"
            MobileNetConvLayer(net, bottom, name, num_priors * width, 1, use_bn=False,
                               use_relu=False)
            net[f"{name}_perm"] = L.Permute(net[name], order=[0, 2, 3, 1])
            net[f"{name}_flat"] = L.Flatten(net[f"{name}_perm"], axis=1)
            out.append(net[f"{name}_flat"])
        # gen.py prints sizes with one decimal.
        prior = dict(min_size=round(input_size * low, 1), aspect_ratio=aspect_ratio, flip=True,
                     clip=False, variance=[0.1, 0.1, 0.2, 0.2], offset=0.5)
        if index > 0:
            prior["max_size"] = round(input_size * high, 1)
        net[f"{bottom}_mbox_priorbox"] = L.PriorBox(net[bottom], net[data_layer], **prior)
        priorbox_layers.append(net[f"{bottom}_mbox_priorbox"])
    net.mbox_loc = L.Concat(*loc_layers, axis=1)
    net.mbox_conf = L.Concat(*conf_layers, axis=1)
    net.mbox_priorbox = L.Concat(*priorbox_layers, axis=2)
    return [net.mbox_loc, net.mbox_conf, net.mbox_priorbox]
