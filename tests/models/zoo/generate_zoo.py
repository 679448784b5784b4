"""Writes the model-zoo deploy prototxts of this folder.

Run ``python tests/models/zoo/generate_zoo.py``.

The layer graphs, layer names, shapes and parameters are those of the public BVLC model-zoo
deploy definitions (and of NIN, VGG-16 and ResNet-50, see README.md one folder up); the text
is written by this script, not copied. Weights are not needed: the tests fill the nets with
random values.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


class Proto:
    """Accumulates prototxt layers."""

    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        dims = " ".join(f"dim: {d}" for d in shape)
        self.lines = [f'name: "{name}"',
                      f'layer {{\n  name: "data"\n  type: "Input"\n  top: "data"\n'
                      f'  input_param {{ shape: {{ {dims} }} }}\n}}']

    def layer(self, name: str, type_: str, bottoms, tops, body: str = "") -> str:
        text = [f'layer {{\n  name: "{name}"\n  type: "{type_}"']
        text += [f'  bottom: "{b}"' for b in ([bottoms] if isinstance(bottoms, str) else bottoms)]
        text += [f'  top: "{t}"' for t in ([tops] if isinstance(tops, str) else tops)]
        if body:
            text.append("  " + body)
        self.lines.append("\n".join(text) + "\n}")
        return tops if isinstance(tops, str) else tops[0]

    def conv(self, name, bottom, num, kernel, stride=1, pad=0, group=1, bias=True, top=None):
        fields = [f"num_output: {num}"]
        if not bias:
            fields.append("bias_term: false")
        if pad:
            fields.append(f"pad: {pad}")
        fields.append(f"kernel_size: {kernel}")
        if stride != 1:
            fields.append(f"stride: {stride}")
        if group != 1:
            fields.append(f"group: {group}")
        return self.layer(name, "Convolution", bottom, top or name,
                          "convolution_param { " + " ".join(fields) + " }")

    def relu(self, name, blob):
        return self.layer(name, "ReLU", blob, blob)

    def pool(self, name, bottom, kind, kernel, stride, pad=0, top=None):
        fields = f"pool: {kind} kernel_size: {kernel} stride: {stride}"
        if pad:
            fields += f" pad: {pad}"
        return self.layer(name, "Pooling", bottom, top or name,
                          "pooling_param { " + fields + " }")

    def lrn(self, name, bottom, top=None):
        return self.layer(name, "LRN", bottom, top or name,
                          "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")

    def fc(self, name, bottom, num, top=None):
        return self.layer(name, "InnerProduct", bottom, top or name,
                          f"inner_product_param {{ num_output: {num} }}")

    def dropout(self, name, blob, ratio=0.5):
        return self.layer(name, "Dropout", blob, blob,
                          f"dropout_param {{ dropout_ratio: {ratio} }}")

    def softmax(self, bottom, name="prob"):
        return self.layer(name, "Softmax", bottom, name)

    def bn_scale(self, bn, scale, blob):
        self.layer(bn, "BatchNorm", blob, blob, "batch_norm_param { use_global_stats: true }")
        return self.layer(scale, "Scale", blob, blob, "scale_param { bias_term: true }")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def caffenet_body(p: Proto, alexnet: bool = False) -> str:
    """conv1..fc7 of CaffeNet (pool before LRN) or AlexNet (LRN before pool)."""
    x = p.relu("relu1", p.conv("conv1", "data", 96, 11, stride=4))
    if alexnet:
        x = p.pool("pool1", p.lrn("norm1", x), "MAX", 3, 2)
    else:
        x = p.lrn("norm1", p.pool("pool1", x, "MAX", 3, 2))
    x = p.relu("relu2", p.conv("conv2", x, 256, 5, pad=2, group=2))
    if alexnet:
        x = p.pool("pool2", p.lrn("norm2", x), "MAX", 3, 2)
    else:
        x = p.lrn("norm2", p.pool("pool2", x, "MAX", 3, 2))
    x = p.relu("relu3", p.conv("conv3", x, 384, 3, pad=1))
    x = p.relu("relu4", p.conv("conv4", x, 384, 3, pad=1, group=2))
    x = p.relu("relu5", p.conv("conv5", x, 256, 3, pad=1, group=2))
    x = p.pool("pool5", x, "MAX", 3, 2)
    x = p.dropout("drop6", p.relu("relu6", p.fc("fc6", x, 4096)))
    return p.dropout("drop7", p.relu("relu7", p.fc("fc7", x, 4096)))


def caffenet() -> str:
    p = Proto("CaffeNet", (10, 3, 227, 227))
    p.softmax(p.fc("fc8", caffenet_body(p), 1000))
    return p.text()


def alexnet() -> str:
    p = Proto("AlexNet", (10, 3, 227, 227))
    p.softmax(p.fc("fc8", caffenet_body(p, alexnet=True), 1000))
    return p.text()


def rcnn_ilsvrc13() -> str:
    p = Proto("R-CNN-ilsvrc13", (10, 3, 227, 227))
    p.fc("fc-rcnn", caffenet_body(p), 200)
    return p.text()


def flickr_style() -> str:
    p = Proto("FlickrStyleCaffeNet", (10, 3, 227, 227))
    p.softmax(p.fc("fc8_flickr", caffenet_body(p), 20))
    return p.text()


# (1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj) of each GoogLeNet inception module.
INCEPTION = {"3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
             "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
             "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
             "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
             "5b": (384, 192, 384, 48, 128, 128)}


def inception(p: Proto, name: str, bottom: str) -> str:
    n1, n3r, n3, n5r, n5, npool = INCEPTION[name]
    m = f"inception_{name}"
    b1 = p.relu(f"{m}/relu_1x1", p.conv(f"{m}/1x1", bottom, n1, 1))
    b3 = p.relu(f"{m}/relu_3x3_reduce", p.conv(f"{m}/3x3_reduce", bottom, n3r, 1))
    b3 = p.relu(f"{m}/relu_3x3", p.conv(f"{m}/3x3", b3, n3, 3, pad=1))
    b5 = p.relu(f"{m}/relu_5x5_reduce", p.conv(f"{m}/5x5_reduce", bottom, n5r, 1))
    b5 = p.relu(f"{m}/relu_5x5", p.conv(f"{m}/5x5", b5, n5, 5, pad=2))
    bp = p.pool(f"{m}/pool", bottom, "MAX", 3, 1, pad=1)
    bp = p.relu(f"{m}/relu_pool_proj", p.conv(f"{m}/pool_proj", bp, npool, 1))
    return p.layer(f"{m}/output", "Concat", [b1, b3, b5, bp], f"{m}/output")


def googlenet() -> str:
    p = Proto("GoogleNet", (10, 3, 224, 224))
    x = p.relu("conv1/relu_7x7", p.conv("conv1/7x7_s2", "data", 64, 7, stride=2, pad=3))
    x = p.lrn("pool1/norm1", p.pool("pool1/3x3_s2", x, "MAX", 3, 2))
    x = p.relu("conv2/relu_3x3_reduce", p.conv("conv2/3x3_reduce", x, 64, 1))
    x = p.relu("conv2/relu_3x3", p.conv("conv2/3x3", x, 192, 3, pad=1))
    x = p.pool("pool2/3x3_s2", p.lrn("conv2/norm2", x), "MAX", 3, 2)
    x = inception(p, "3b", inception(p, "3a", x))
    x = p.pool("pool3/3x3_s2", x, "MAX", 3, 2)
    for name in ("4a", "4b", "4c", "4d", "4e"):
        x = inception(p, name, x)
    x = p.pool("pool4/3x3_s2", x, "MAX", 3, 2)
    x = inception(p, "5b", inception(p, "5a", x))
    x = p.pool("pool5/7x7_s1", x, "AVE", 7, 1)
    x = p.dropout("pool5/drop_7x7_s1", x, 0.4)
    p.softmax(p.fc("loss3/classifier", x, 1000))
    return p.text()


def nin_cifar10() -> str:
    """Network in Network on CIFAR-10 (Lin et al. 2014): three mlpconv blocks, global AVE."""
    p = Proto("NIN_CIFAR10", (10, 3, 32, 32))
    x = p.relu("relu1", p.conv("conv1", "data", 192, 5, pad=2))
    x = p.relu("relu_cccp1", p.conv("cccp1", x, 160, 1))
    x = p.relu("relu_cccp2", p.conv("cccp2", x, 96, 1))
    x = p.dropout("drop3", p.pool("pool1", x, "MAX", 3, 2))
    x = p.relu("relu2", p.conv("conv2", x, 192, 5, pad=2))
    x = p.relu("relu_cccp3", p.conv("cccp3", x, 192, 1))
    x = p.relu("relu_cccp4", p.conv("cccp4", x, 192, 1))
    x = p.dropout("drop6", p.pool("pool2", x, "AVE", 3, 2))
    x = p.relu("relu3", p.conv("conv3", x, 192, 3, pad=1))
    x = p.relu("relu_cccp5", p.conv("cccp5", x, 192, 1))
    x = p.relu("relu_cccp6", p.conv("cccp6", x, 10, 1))
    x = p.pool("pool3", x, "AVE", 8, 1)
    p.softmax(x)
    return p.text()


def vgg16_style() -> str:
    """VGG-16's 13 3x3 convolutions (64..512 channels) and 5 max pools on a 32 x 32 input,
    with its fc6 / fc7 narrowed to 512 (the 224 x 224 original's fc6 alone has 103M weights)."""
    p = Proto("VGG_ILSVRC_16_layers_style", (1, 3, 32, 32))
    x = "data"
    for stage, (width, count) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),
                                           start=1):
        for i in range(1, count + 1):
            x = p.relu(f"relu{stage}_{i}", p.conv(f"conv{stage}_{i}", x, width, 3, pad=1))
        x = p.pool(f"pool{stage}", x, "MAX", 2, 2)
    x = p.dropout("drop6", p.relu("relu6", p.fc("fc6", x, 512)))
    x = p.dropout("drop7", p.relu("relu7", p.fc("fc7", x, 512)))
    p.softmax(p.fc("fc8", x, 1000))
    return p.text()


def resnet_block(p: Proto, name: str, bottom: str, mid: int, out: int, stride: int,
                 project: bool) -> str:
    """One ResNet-50 bottleneck (1x1 / 3x3 / 1x1 with BatchNorm + Scale after each conv), named
    as in ResNet-50-deploy.prototxt."""
    if project:
        short = p.conv(f"res{name}_branch1", bottom, out, 1, stride=stride, bias=False)
        short = p.bn_scale(f"bn{name}_branch1", f"scale{name}_branch1", short)
    else:
        short = bottom
    x = p.conv(f"res{name}_branch2a", bottom, mid, 1, stride=stride, bias=False)
    x = p.relu(f"res{name}_branch2a_relu",
               p.bn_scale(f"bn{name}_branch2a", f"scale{name}_branch2a", x))
    x = p.conv(f"res{name}_branch2b", x, mid, 3, pad=1, bias=False)
    x = p.relu(f"res{name}_branch2b_relu",
               p.bn_scale(f"bn{name}_branch2b", f"scale{name}_branch2b", x))
    x = p.conv(f"res{name}_branch2c", x, out, 1, bias=False)
    x = p.bn_scale(f"bn{name}_branch2c", f"scale{name}_branch2c", x)
    x = p.layer(f"res{name}", "Eltwise", [short, x], f"res{name}")
    return p.relu(f"res{name}_relu", x)


def resnet50_style() -> str:
    """ResNet-50's stem and its first two stages' opening blocks (res2a, res2b, res3a) at a
    quarter of the widths, on a 64 x 64 input; global AVE pool and fc1000 as the original."""
    p = Proto("ResNet-50-style", (1, 3, 64, 64))
    x = p.conv("conv1", "data", 16, 7, stride=2, pad=3)
    x = p.relu("conv1_relu", p.bn_scale("bn_conv1", "scale_conv1", x))
    x = p.pool("pool1", x, "MAX", 3, 2)
    x = resnet_block(p, "2a", x, 16, 64, 1, True)
    x = resnet_block(p, "2b", x, 16, 64, 1, False)
    x = resnet_block(p, "3a", x, 32, 128, 2, True)
    x = p.pool("pool5", x, "AVE", 8, 1)
    p.softmax(p.fc("fc1000", x, 1000))
    return p.text()


NETS = {"bvlc_reference_caffenet_deploy": caffenet, "bvlc_alexnet_deploy": alexnet,
        "bvlc_googlenet_deploy": googlenet,
        "bvlc_reference_rcnn_ilsvrc13_deploy": rcnn_ilsvrc13,
        "finetune_flickr_style_deploy": flickr_style, "nin_cifar10_deploy": nin_cifar10,
        "vgg16_style_deploy": vgg16_style, "resnet50_style_deploy": resnet50_style}


def main() -> None:
    for name, make in NETS.items():
        (HERE / f"{name}.prototxt").write_text(make())


if __name__ == "__main__":
    main()
