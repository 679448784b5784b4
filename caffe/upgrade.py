"""Bring legacy net and solver definitions up to the current format, as C++ Caffe does on load.

Nets pass through five steps, each applied only when the definition needs it, in Caffe's order:

1. V0 -> V1: ``layers { layer { type: "conv" ... } }`` becomes ``layers { type: CONVOLUTION ... }``;
   ``"padding"`` layers are folded into the ``pad`` of the convolution or pooling they feed.
2. Data transformation: ``scale`` / ``mean_file`` / ``crop_size`` / ``mirror`` of V1 Data, ImageData
   and WindowData layers move into ``transform_param``.
3. V1 -> V2: ``layers`` with an enum ``type`` become ``layer`` with a string type; ``param``,
   ``blob_share_mode``, ``blobs_lr`` and ``weight_decay`` become ParamSpec entries.
4. Inputs: the net-level ``input`` / ``input_shape`` / ``input_dim`` fields become a first layer
   ``name: "input" type: "Input"``.
5. BatchNorm: a BatchNorm layer that declares exactly three ParamSpec entries (the old way of
   freezing its statistics with ``lr_mult: 0``) loses them; the layer fixes those multipliers
   itself.

Solvers have one step: the ``solver_type`` enum becomes the ``type`` string.

Functions return upgraded copies and leave their argument untouched. What Caffe treats as fatal
raises :class:`~caffe.errors.NetError` / :class:`~caffe.errors.SolverError`; what Caffe reports and
continues past is logged on the ``"caffe"`` logger.
"""

from __future__ import annotations

import logging

from caffe.errors import NetError, SolverError
from caffe.proto import caffe_pb2

logger = logging.getLogger("caffe")

_V1 = caffe_pb2.V1LayerParameter

# V1 LayerType enum name -> V2 layer type string.
V1_LAYER_TYPE_NAMES: dict[str, str] = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# V0 type string -> V1 LayerType enum name (V0 knew only these).
V0_LAYER_TYPES: dict[str, str] = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# Where each V0 layer field lands in V1, per V0 layer type: (sub-message, field). A field given
# on a layer type missing from its entry cannot be upgraded and is reported.
_V0_FIELD_TARGETS: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"),
               "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "rand_skip": {"data": ("data_param", "rand_skip"),
                  "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "")},  # "": the whole message
}
# V0 fields that become transform_param fields whatever the layer type.
_V0_TRANSFORM_FIELDS = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size",
                        "mirror": "mirror"}
# V0 fields handled elsewhere, or (new_num, new_channels) dropped silently as Caffe does.
_V0_OTHER_FIELDS = {"name", "type", "blobs", "blobs_lr", "weight_decay", "new_num", "new_channels"}

# V1 data layers whose own parameter message carries the legacy transformation fields.
_V1_DATA_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
                   "WINDOW_DATA": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# Every *_param of V1LayerParameter has a LayerParameter field of the same name and type.
_V1_PARAM_FIELDS = tuple(f.name for f in _V1.DESCRIPTOR.fields
                         if f.message_type is not None and f.name.endswith("_param"))

SOLVER_TYPE_NAMES: dict[str, str] = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}


def v1_layer_type_name(layer_type: int | str) -> str:
    """V2 type string of a V1 ``LayerType`` value or name: CONVOLUTION -> "Convolution"."""
    name = layer_type if isinstance(layer_type, str) else _enum_name(_V1.LayerType, layer_type)
    if name not in V1_LAYER_TYPE_NAMES:
        raise NetError(f"Unknown V1LayerParameter layer type: {layer_type}")
    return V1_LAYER_TYPE_NAMES[name]


# ---------------------------------------------------------------------------------------------
# Nets
# ---------------------------------------------------------------------------------------------

def net_needs_upgrade(param: caffe_pb2.NetParameter) -> bool:
    """True when ``param`` uses any legacy form that :func:`upgrade_net_as_needed` rewrites."""
    return (_needs_v0_upgrade(param) or _needs_v1_upgrade(param) or _needs_data_upgrade(param)
            or _needs_input_upgrade(param) or _needs_batch_norm_upgrade(param))


def upgrade_net_as_needed(param: caffe_pb2.NetParameter,
                          source: str = "<net>") -> caffe_pb2.NetParameter:
    """Return a copy of ``param`` in the current format; ``source`` names it in log messages."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(param)
    if _needs_v0_upgrade(net):
        logger.info("%s: upgrading V0LayerParameter layers", source)
        net, ok = _upgrade_v0_net(net)
        if not ok:
            logger.error("%s: had one or more problems upgrading V0NetParameter to "
                         "NetParameter (see above); continuing anyway", source)
        logger.warning("%s: V0 layer definitions are deprecated; save the upgraded net", source)
    if _needs_data_upgrade(net):
        logger.info("%s: moving data transformation fields into transform_param", source)
        _upgrade_data_transformation(net)
        logger.warning("%s: data transformation fields outside transform_param are deprecated",
                       source)
    if _needs_v1_upgrade(net):
        logger.info("%s: upgrading V1LayerParameter layers", source)
        net, ok = _upgrade_v1_net(net)
        if not ok:
            logger.error("%s: had one or more problems upgrading V1LayerParameter "
                         "(see above); continuing anyway", source)
    if _needs_input_upgrade(net):
        logger.info("%s: turning input fields into an Input layer", source)
        _upgrade_input(net)
        logger.warning("%s: net input fields are deprecated; use an Input layer", source)
    if _needs_batch_norm_upgrade(net):
        logger.info("%s: dropping the ParamSpecs of old-style BatchNorm layers", source)
        _upgrade_batch_norm(net)
    return net


def _needs_v0_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return any(layer.HasField("layer") for layer in net.layers)


def _needs_v1_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return len(net.layers) > 0


def _needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    for layer in net.layers:
        field = _V1_DATA_PARAMS.get(_enum_name(_V1.LayerType, layer.type))
        if field is not None:
            data_param = getattr(layer, field)
            if any(data_param.HasField(name) for name in _TRANSFORM_FIELDS):
                return True
    return False


def _needs_input_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return len(net.input) > 0


def _needs_batch_norm_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer)


# --- V0 -> V1 -------------------------------------------------------------------------------

def _upgrade_v0_net(v0_net: caffe_pb2.NetParameter) -> tuple[caffe_pb2.NetParameter, bool]:
    padded = _fold_padding_layers(v0_net)
    net = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        net.name = padded.name
    ok = True
    for connection in padded.layers:
        layer, layer_ok = _upgrade_v0_layer(connection)
        net.layers.add().CopyFrom(layer)
        ok &= layer_ok
    net.input.extend(padded.input)
    net.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        net.force_backward = padded.force_backward
    return net, ok


def _fold_padding_layers(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Drop V0 "padding" layers, giving their pad to the conv / pool layer they feed."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    producer = dict.fromkeys(net.input, -1)  # blob -> index of the layer that last wrote it
    for index, connection in enumerate(net.layers):
        layer = connection.layer
        if layer.type != "padding":
            out.layers.add().CopyFrom(connection)
        for j, blob in enumerate(connection.bottom):
            if blob not in producer:
                raise NetError(f"Unknown blob input {blob} to layer "
                               f"{layer.name or index} (V0 net upgrade)")
            source_index = producer[blob]
            if source_index < 0:
                continue
            source = net.layers[source_index]
            if source.layer.type != "padding":
                continue
            if layer.type not in ("conv", "pool"):
                raise NetError(f"Padding layer input to non-convolutional / non-pooling layer "
                               f"type {layer.type} (layer {layer.name or index})")
            if len(connection.bottom) != 1:
                raise NetError(f"Layer {layer.name or index} fed by a padding layer must take "
                               f"a single blob as input")
            if len(source.bottom) != 1 or len(source.top) != 1:
                raise NetError(f"Padding layer {source.layer.name or source_index} must take "
                               f"one input and produce one output")
            target = out.layers[-1]
            target.layer.pad = source.layer.pad
            target.bottom[j] = source.bottom[0]
        for blob in connection.top:
            producer[blob] = index
    return out


def _upgrade_v0_layer(
        connection: caffe_pb2.V1LayerParameter) -> tuple[caffe_pb2.V1LayerParameter, bool]:
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(connection.bottom)
    out.top.extend(connection.top)
    if not connection.HasField("layer"):
        return out, True
    v0 = connection.layer
    layer_type = v0.type
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if layer_type not in V0_LAYER_TYPES:
            raise NetError(f"Unknown layer name: {layer_type} (V0 layer {v0.name!r})")
        out.type = _V1.LayerType.Value(V0_LAYER_TYPES[layer_type])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)

    ok = True
    for field, value in v0.ListFields():
        name = field.name
        if name in _V0_OTHER_FIELDS:
            continue
        if name in _V0_TRANSFORM_FIELDS:
            setattr(out.transform_param, _V0_TRANSFORM_FIELDS[name], value)
            continue
        target = _V0_FIELD_TARGETS[name].get(layer_type)
        if target is None:
            logger.error("Unknown parameter %s for layer type %s", name, layer_type)
            ok = False
            continue
        message_name, target_name = target
        message = getattr(out, message_name)
        if not target_name:
            message.CopyFrom(value)
        elif name == "pool":
            message.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(
                caffe_pb2.V0LayerParameter.PoolMethod.Name(value))
        else:
            _assign(message, target_name, value)
    return out, ok


def _assign(message, name: str, value) -> None:
    """Set ``message.name`` to ``value``: append to a repeated field, copy into a message field."""
    field = message.DESCRIPTOR.fields_by_name[name]
    if _is_repeated(field):
        getattr(message, name).append(value)
    elif field.message_type is not None:
        getattr(message, name).CopyFrom(value)
    else:
        setattr(message, name, value)


# --- data transformation fields ---------------------------------------------------------------

def _upgrade_data_transformation(net: caffe_pb2.NetParameter) -> None:
    for layer in net.layers:
        field = _V1_DATA_PARAMS.get(_enum_name(_V1.LayerType, layer.type))
        if field is None:
            continue
        data_param = getattr(layer, field)
        for name in _TRANSFORM_FIELDS:
            if data_param.HasField(name):
                setattr(layer.transform_param, name, getattr(data_param, name))
                data_param.ClearField(name)


# --- V1 -> V2 -------------------------------------------------------------------------------

def _upgrade_v1_net(v1_net: caffe_pb2.NetParameter) -> tuple[caffe_pb2.NetParameter, bool]:
    if len(v1_net.layer) > 0:
        raise NetError("Refusing to upgrade inconsistent NetParameter input; the definition "
                       "includes both 'layer' and 'layers' fields. The current format defines "
                       "'layer' fields with string type like layer { type: 'Layer' ... } and not "
                       "layers { type: LAYER ... }. Manually switch the definition to 'layer' "
                       "format to continue.")
    net = caffe_pb2.NetParameter()
    net.CopyFrom(v1_net)
    net.ClearField("layers")
    net.ClearField("layer")
    ok = True
    for index, v1_layer in enumerate(v1_net.layers):
        layer, layer_ok = _upgrade_v1_layer(v1_layer)
        net.layer.add().CopyFrom(layer)
        if not layer_ok:
            logger.error("Upgrade of input layer %d failed.", index)
            ok = False
    return net, ok


def _upgrade_v1_layer(
        v1: caffe_pb2.V1LayerParameter) -> tuple[caffe_pb2.LayerParameter, bool]:
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = v1_layer_type_name(v1.type)
    layer.blobs.extend(v1.blobs)

    def param_spec(i: int) -> caffe_pb2.ParamSpec:
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        param_spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        param_spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(
            _V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        param_spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        param_spec(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in _V1_PARAM_FIELDS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))

    if v1.HasField("layer"):
        logger.error("Input NetParameter has V0 layer -- ignoring.")
        return layer, False
    return layer, True


# --- inputs, BatchNorm ------------------------------------------------------------------------

def _upgrade_input(net: caffe_pb2.NetParameter) -> None:
    # Inputs with neither shapes nor dims (old .caffemodel files) are simply dropped.
    has_shape = len(net.input_shape) > 0
    has_dim = len(net.input_dim) > 0
    if has_shape or has_dim:
        if has_shape and len(net.input_shape) < len(net.input):
            raise NetError(f"{len(net.input)} net inputs but only {len(net.input_shape)} "
                           f"input_shape entries")
        if not has_shape and len(net.input_dim) < 4 * len(net.input):
            raise NetError(f"{len(net.input)} net inputs need {4 * len(net.input)} input_dim "
                           f"values (four per input), got {len(net.input_dim)}")
        input_layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, blob in enumerate(net.input):
            input_layer.top.append(blob)
            shape = input_layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        layers = [input_layer, *net.layer]
        del net.layer[:]
        net.layer.extend(layers)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def _upgrade_batch_norm(net: caffe_pb2.NetParameter) -> None:
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            layer.ClearField("param")


# ---------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------

def solver_needs_upgrade(param: caffe_pb2.SolverParameter) -> bool:
    """True when ``param`` sets the legacy ``solver_type`` enum."""
    return param.HasField("solver_type")


def upgrade_solver_as_needed(param: caffe_pb2.SolverParameter,
                             source: str = "<solver>") -> caffe_pb2.SolverParameter:
    """Return a copy of ``param`` with ``solver_type`` turned into ``type``.

    Raises :class:`~caffe.errors.SolverError` when both are given, as Caffe refuses that.
    """
    solver = caffe_pb2.SolverParameter()
    solver.CopyFrom(param)
    if not solver_needs_upgrade(solver):
        return solver
    if solver.HasField("type"):
        raise SolverError(f"{source}: Failed to upgrade solver: old solver_type field (enum) and "
                          f"new type field (string) cannot be both specified in solver proto "
                          f"text.")
    logger.info("%s: upgrading the deprecated 'solver_type' field", source)
    solver.type = SOLVER_TYPE_NAMES[_enum_name(caffe_pb2.SolverParameter.SolverType,
                                               solver.solver_type)]
    solver.ClearField("solver_type")
    logger.warning("%s: 'solver_type' is deprecated; use the string field 'type'", source)
    return solver


# ---------------------------------------------------------------------------------------------

def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def _is_repeated(field) -> bool:
    # FieldDescriptor.label is deprecated in recent protobuf releases; is_repeated is new.
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == field.LABEL_REPEATED
