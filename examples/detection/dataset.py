"""A synthetic detection dataset in VOC layout: coloured rectangles and circles on noise.

    write_dataset(out_dir, num_train=400, num_test=100)

writes ``images/<id>.png`` (BGR, ``size`` x ``size``, 64 by default),
``annotations/<id>.xml`` (VOC XML: size, objects with name, difficult and a pixel bndbox),
``train.txt`` and ``test.txt`` (list files of ``images/<id>.png annotations/<id>.xml`` pairs,
as SSD's create_list.sh writes them) and ``labelmap.prototxt`` (background 0, rectangle 1,
circle 2). Every shape's colour is random, so only its form tells its class; boxes are exact
(a shape fills its box's rows and columns).
"""

from __future__ import annotations

import os
from xml.sax.saxutils import escape

import numpy as np

CLASSES = ("rectangle", "circle")


def _write_png(path: str, image: np.ndarray) -> None:
    """Write an H x W x 3 BGR uint8 image with OpenCV or, without it, Pillow."""
    try:
        import cv2
    except ImportError:
        try:
            from PIL import Image
        except ImportError:
            raise SystemExit("the detection example needs opencv-python or Pillow "
                             "(pip install caffepy[data])") from None
        Image.fromarray(image[:, :, ::-1]).save(path)
        return
    cv2.imwrite(path, image)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
    return float(inter / union)


def draw_sample(rng: np.random.Generator, size: int = 64, max_objects: int = 3,
                min_side: int = 12, max_side: int = 36) -> tuple[np.ndarray, list[tuple]]:
    """One image and its objects [(class name, xmin, ymin, xmax, ymax)], pixel corners with
    exclusive max (a box covers columns xmin .. xmax - 1)."""
    image = rng.integers(0, 160, size=(size, size, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:size, 0:size]
    objects: list[tuple] = []
    boxes: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            cls = int(rng.integers(len(CLASSES)))
            w = int(rng.integers(min_side, max_side + 1))
            h = w if cls == 1 else int(rng.integers(min_side, max_side + 1))
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float64)
            if all(_iou(box, other) < 0.2 for other in boxes):
                break
        else:
            continue
        colour = rng.integers(60, 256, size=3).astype(np.uint8)
        colour[rng.integers(3)] = 255  # at least one bright channel, to stand out of the noise
        if cls == 0:
            mask = (xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)
        else:
            r = w / 2.0
            mask = (xs + 0.5 - x0 - r) ** 2 + (ys + 0.5 - y0 - r) ** 2 <= r * r
        image[mask] = colour
        boxes.append(box)
        objects.append((CLASSES[cls], x0, y0, x0 + w, y0 + h))
    return image, objects


def voc_xml(filename: str, size: int, objects: list[tuple]) -> str:
    parts = [f"<annotation>\n  <filename>{escape(filename)}</filename>\n  <size>\n"
             f"    <width>{size}</width>\n    <height>{size}</height>\n    <depth>3</depth>\n"
             f"  </size>\n"]
    for name, xmin, ymin, xmax, ymax in objects:
        parts.append(f"  <object>\n    <name>{name}</name>\n    <difficult>0</difficult>\n"
                     f"    <bndbox>\n      <xmin>{xmin}</xmin>\n      <ymin>{ymin}</ymin>\n"
                     f"      <xmax>{xmax}</xmax>\n      <ymax>{ymax}</ymax>\n    </bndbox>\n"
                     f"  </object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def label_map_text() -> str:
    items = [("none_of_the_above", 0, "background")]
    items += [(name, index + 1, name) for index, name in enumerate(CLASSES)]
    return "".join(f'item {{\n  name: "{name}"\n  label: {label}\n  display_name: "{display}"\n}}\n'
                   for name, label, display in items)


def write_dataset(out_dir: str, num_train: int = 400, num_test: int = 100, size: int = 64,
                  seed: int = 1) -> dict[str, str]:
    """Write the dataset under ``out_dir``; return the paths of the list files and label map."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    paths = {}
    index = 0
    for split, count in (("train", num_train), ("test", num_test)):
        lines = []
        for _ in range(count):
            index += 1
            image, objects = draw_sample(rng, size)
            name = f"{index:06d}"
            _write_png(os.path.join(out_dir, "images", f"{name}.png"), image)
            with open(os.path.join(out_dir, "annotations", f"{name}.xml"), "w") as f:
                f.write(voc_xml(f"{name}.png", size, objects))
            lines.append(f"images/{name}.png annotations/{name}.xml\n")
        paths[split] = os.path.join(out_dir, f"{split}.txt")
        with open(paths[split], "w") as f:
            f.writelines(lines)
    paths["label_map"] = os.path.join(out_dir, "labelmap.prototxt")
    with open(paths["label_map"], "w") as f:
        f.write(label_map_text())
    return paths
