"""Detection annotations and label maps, as the SSD fork's util/io.cpp reads them.

- Label maps: ``read_label_map`` / ``write_label_map`` (``LabelMap`` prototxt),
  ``label_file_to_label_map`` (ReadLabelFileToLabelMap: one ``name [label] [display_name]`` a
  line), and the lookups ``name_to_label``, ``label_to_name``, ``label_to_display_name``
  (MapNameToLabel, MapLabelToName, MapLabelToDisplayName; ``strict_check`` refuses duplicates).
- Annotation files, each giving objects in pixel coordinates of the original image, stored as
  boxes normalized by the image size (``x / width``, ``y / height`` in float32):

  * ``xml``: PASCAL VOC. ``annotation/size/{width,height}`` (the image's own size when absent),
    then per ``annotation/object`` its ``name`` (looked up in the label map), ``difficult``
    (exactly ``1`` for true) and ``bndbox/{xmin,ymin,xmax,ymax}`` (integers; a missing or
    non-integer coordinate reads as 0, as the fork's ``ptree::get(key, 0)`` does).
  * ``json``: one image per file, the fork's MSCOCO form::

        {"image": {"width": 500, "height": 375},
         "annotation": [{"category_id": "dog", "bbox": [x, y, width, height], "iscrowd": 0},
                        ...]}

    ``category_id`` is looked up in the label map as text (a number 18 as the name "18");
    ``iscrowd`` (default 0) becomes the difficult flag; ``image`` may be left out.
  * ``txt``: one ``label xmin ymin xmax ymax`` a line (numeric labels, no label map).

- ``AnnotatedDatum`` building: objects of one label form one ``AnnotationGroup`` (groups in the
  order labels first appear), with ``instance_id`` 0, 1, ... within the group.
  ``read_rich_image_to_annotated_datum`` is the fork's ReadRichImageToAnnotatedDatum (an image
  whose annotation file does not exist is kept, with no boxes).
- ``annotated_datum_to_array``: an AnnotatedDatum back to (CxHxW image, boxes) with boxes rows
  ``[label, instance_id, xmin, ymin, xmax, ymax, difficult]`` (the AnnotatedData label blob's
  columns after the item id).

Malformed files raise ``DataError`` naming the file (and the line, for XML).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from xml.parsers import expat

import numpy as np

from caffe.data.datum import datum_to_image, read_image_to_datum
from caffe.data.image import IMREAD_COLOR, imread
from caffe.errors import DataError
from caffe.proto import caffe_pb2
from caffe.protoio import read_text_proto, write_text_proto

logger = logging.getLogger("caffe")

_INT = re.compile(r"\s*[+-]?\d+\s*\Z")


# --- label maps -------------------------------------------------------------------------------
def read_label_map(path: str | os.PathLike) -> caffe_pb2.LabelMap:
    """A ``LabelMap`` prototxt (``item { name: "dog" label: 12 display_name: "dog" }`` ...)."""
    return read_text_proto(path, caffe_pb2.LabelMap(), "label map")


def write_label_map(label_map: caffe_pb2.LabelMap, path: str | os.PathLike) -> None:
    """Write ``label_map`` as a prototxt (atomically)."""
    write_text_proto(path, label_map)


def label_file_to_label_map(filename: str | os.PathLike, include_background: bool = True,
                            delimiter: str = " ") -> caffe_pb2.LabelMap:
    """ReadLabelFileToLabelMap: lines ``name``, ``name label`` or ``name label display_name``
    (fields split at any character of ``delimiter``; every line has the same count). One field:
    labels count up from 0 (from 1 after the ``none_of_the_above`` background item that
    ``include_background`` puts first); two: the display name is the name."""
    try:
        with open(filename, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise DataError(f"cannot read label file {os.fspath(filename)!r}: {exc.strerror}") \
            from None
    label_map = caffe_pb2.LabelMap()
    label = 0
    if include_background:
        label_map.item.add(name="none_of_the_above", label=0, display_name="background")
        label = 1
    field_size = -1
    split = re.compile("[" + re.escape(delimiter) + "]") if delimiter else None
    for number, line in enumerate(text.splitlines(), 1):
        fields = split.split(line) if split else [line]
        where = f"{os.fspath(filename)}:{number}"
        if field_size == -1:
            field_size = len(fields)
        elif len(fields) != field_size:
            raise DataError(f"{where}: Inconsistent number of fields per line ({len(fields)}, "
                            f"the first line has {field_size})")
        if field_size > 3:
            raise DataError(f"{where}: The number of fields should be [1, 3] (got {field_size})")
        if field_size > 1:
            label = _c_atoi(fields[1])
        item = label_map.item.add(name=fields[0], label=label,
                                  display_name=fields[2] if field_size == 3 else fields[0])
        if field_size == 1:
            label = item.label + 1
    return label_map


def _c_atoi(text: str) -> int:
    """C's atoi: leading blanks, an optional sign, digits; 0 when there are none."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def _label_lookup(label_map, key_field: str, value_field: str, strict_check: bool,
                  source: str) -> dict:
    table: dict = {}
    for item in label_map.item:
        key, value = getattr(item, key_field), getattr(item, value_field)
        if strict_check and key in table:
            where = f"{source}: " if source else ""
            raise DataError(f"{where}There are many duplicates of {key_field}: {key}")
        table[key] = value
    return table


def name_to_label(label_map: caffe_pb2.LabelMap, strict_check: bool = True,
                  source: str = "") -> dict[str, int]:
    """MapNameToLabel: ``{name: label}``; ``strict_check`` refuses a repeated name (else the
    last one wins). ``source`` (a file name) prefixes the error."""
    return _label_lookup(label_map, "name", "label", strict_check, source)


def label_to_name(label_map: caffe_pb2.LabelMap, strict_check: bool = True,
                  source: str = "") -> dict[int, str]:
    """MapLabelToName: ``{label: name}``; ``strict_check`` refuses a repeated label."""
    return _label_lookup(label_map, "label", "name", strict_check, source)


def label_to_display_name(label_map: caffe_pb2.LabelMap, strict_check: bool = True,
                          source: str = "") -> dict[int, str]:
    """MapLabelToDisplayName: ``{label: display_name}``; ``strict_check`` refuses a repeated
    label."""
    return _label_lookup(label_map, "label", "display_name", strict_check, source)


# --- building AnnotatedDatum ------------------------------------------------------------------
def add_annotation(anno_datum: caffe_pb2.AnnotatedDatum, label: int) -> caffe_pb2.Annotation:
    """A new Annotation in ``label``'s group (created at the end if new), with the next
    instance id of that group."""
    for group in anno_datum.annotation_group:
        if group.group_label == label:
            instance_id = group.annotation[-1].instance_id + 1 if len(group.annotation) else 0
            return group.annotation.add(instance_id=instance_id)
    group = anno_datum.annotation_group.add(group_label=label)
    return group.annotation.add(instance_id=0)


def _set_box(anno: caffe_pb2.Annotation, corners, width: int, height: int, difficult: bool,
             labelfile: str) -> None:
    """Store pixel ``corners`` (xmin, ymin, xmax, ymax) normalized by the image size."""
    xmin, ymin, xmax, ymax = (np.float32(v) for v in corners)
    if any(v > width for v in (xmin, xmax)) or any(v > height for v in (ymin, ymax)) \
            or min(xmin, ymin, xmax, ymax) < 0:
        logger.warning("%s bounding box exceeds image boundary.", labelfile)
    if xmin > xmax or ymin > ymax:
        logger.warning("%s bounding box irregular.", labelfile)
    w, h = np.float32(width), np.float32(height)
    box = anno.bbox
    box.xmin, box.ymin, box.xmax, box.ymax = (float(xmin / w), float(ymin / h), float(xmax / w),
                                              float(ymax / h))
    box.difficult = bool(difficult)


def _check_size(labelfile: str, height: int, width: int, img_height: int,
                img_width: int) -> None:
    if height != img_height:
        logger.warning("%s inconsistent image height.", labelfile)
    if width != img_width:
        logger.warning("%s inconsistent image width.", labelfile)
    if width == 0 or height == 0:
        raise DataError(f"{labelfile} no valid image width/height (width {width}, height "
                        f"{height})")


def _lookup(name: str, table: dict[str, int], where: str) -> int:
    if name not in table:
        raise DataError(f"{where}: Unknown name: {name!r} (not in the label map)")
    return table[name]


# --- VOC XML ----------------------------------------------------------------------------------
@dataclass
class _Node:
    tag: str
    line: int
    text: str = ""
    children: list[_Node] = field(default_factory=list)

    def child(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)


def _parse_xml(labelfile: str) -> _Node:
    """The element tree of ``labelfile`` with line numbers (expat)."""
    try:
        with open(labelfile, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"cannot read annotation file {labelfile!r}: {exc.strerror}") from None
    parser = expat.ParserCreate()
    top = _Node("", 0)
    stack = [top]

    def start(tag, _attrs):
        node = _Node(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def end(_tag):
        stack.pop()

    def text(data):
        stack[-1].text += data

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise DataError(f"{labelfile}:{exc.lineno}: cannot parse XML annotation: "
                        f"{expat.ErrorString(exc.code)}") from None
    return top


def _xml_int(node: _Node | None) -> int | None:
    if node is None or not _INT.match(node.text):
        return None
    return int(node.text)


def read_xml_to_annotated_datum(labelfile: str, img_height: int, img_width: int,
                                name_to_label: dict[str, int],
                                anno_datum: caffe_pb2.AnnotatedDatum) -> None:
    """ReadXMLToAnnotatedDatum: add the objects of VOC file ``labelfile`` to ``anno_datum``."""
    root = _parse_xml(labelfile).child("annotation")
    if root is None:
        raise DataError(f"{labelfile}: no <annotation> root element (a PASCAL VOC annotation "
                        f"file is expected)")
    size = root.child("size")
    height = _xml_int(size.child("height")) if size is not None else None
    width = _xml_int(size.child("width")) if size is not None else None
    if height is None or width is None:
        logger.warning("When parsing %s: no integer annotation.size.height/width; using the "
                       "image's size", labelfile)
        height, width = img_height, img_width
    _check_size(labelfile, height, width, img_height, img_width)
    for obj in root.children:
        if obj.tag != "object":
            continue
        anno = None
        difficult = False
        for node in obj.children:
            if node.tag == "name":
                label = _lookup(node.text, name_to_label, f"{labelfile}:{node.line}")
                anno = add_annotation(anno_datum, label)
            elif node.tag == "difficult":
                difficult = node.text == "1"
            elif node.tag == "bndbox":
                if anno is None:
                    raise DataError(f"{labelfile}:{node.line}: <bndbox> before the object's "
                                    f"<name>")
                corners = [_xml_int(node.child(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
                _set_box(anno, [0 if v is None else v for v in corners], width, height,
                         difficult, labelfile)


# --- JSON and TXT -----------------------------------------------------------------------------
def read_json_to_annotated_datum(labelfile: str, img_height: int, img_width: int,
                                 name_to_label: dict[str, int],
                                 anno_datum: caffe_pb2.AnnotatedDatum) -> None:
    """ReadJSONToAnnotatedDatum: add the objects of JSON file ``labelfile`` (see the module
    docstring for the form) to ``anno_datum``."""
    try:
        with open(labelfile, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise DataError(f"cannot read annotation file {labelfile!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{labelfile}:{exc.lineno}: cannot parse JSON annotation: {exc.msg}") \
            from None
    if not isinstance(doc, dict):
        raise DataError(f"{labelfile}: a JSON object with 'image' and 'annotation' is expected")
    image = doc.get("image")
    try:
        height, width = int(image["height"]), int(image["width"])
    except (TypeError, KeyError, ValueError):
        logger.warning("When parsing %s: no image.height/width; using the image's size",
                       labelfile)
        height, width = img_height, img_width
    _check_size(labelfile, height, width, img_height, img_width)
    objects = doc.get("annotation")
    if not isinstance(objects, list):
        raise DataError(f"{labelfile}: 'annotation' must be a list of objects")
    for k, obj in enumerate(objects):
        where = f"{labelfile}: annotation[{k}]"
        if not isinstance(obj, dict) or "category_id" not in obj:
            raise DataError(f"{where}: an object with 'category_id' and 'bbox' is expected")
        category = obj["category_id"]
        anno = add_annotation(anno_datum, _lookup(str(category), name_to_label, where))
        bbox = obj.get("bbox")
        try:
            x, y, w, h = (np.float32(v) for v in bbox)
        except (TypeError, ValueError):
            raise DataError(f"{where}: 'bbox' must be 4 numbers [x, y, width, height], got "
                            f"{bbox!r}") from None
        _set_box(anno, (x, y, x + w, y + h), width, height, bool(obj.get("iscrowd", 0)),
                 labelfile)


def read_txt_to_annotated_datum(labelfile: str, height: int, width: int,
                                anno_datum: caffe_pb2.AnnotatedDatum) -> None:
    """ReadTxtToAnnotatedDatum: ``label xmin ymin xmax ymax`` per line, read up to the first
    entry that does not parse (as the fork's stream loop)."""
    try:
        with open(labelfile, encoding="utf-8") as f:
            tokens = f.read().split()
    except OSError as exc:
        raise DataError(f"cannot read annotation file {labelfile!r}: {exc.strerror}") from None
    for start in range(0, len(tokens) - 4, 5):
        try:
            label = int(tokens[start])
            corners = [np.float32(t) for t in tokens[start + 1:start + 5]]
        except ValueError:
            break
        _set_box(add_annotation(anno_datum, label), corners, width, height, False, labelfile)


# --- whole records ----------------------------------------------------------------------------
def read_rich_image_to_annotated_datum(filename: str, labelfile: str, height: int = 0,
                                       width: int = 0, min_dim: int = 0, max_dim: int = 0,
                                       is_color: bool = True, encoding: str = "",
                                       label_type: str = "xml",
                                       name_to_label: dict[str, int] | None = None
                                       ) -> caffe_pb2.AnnotatedDatum:
    """ReadRichImageToAnnotatedDatum: the image (datum label -1; resize and encoding as
    ``read_image_to_datum``) with the boxes of ``labelfile``, normalized by the original image
    size. A missing ``labelfile`` gives no boxes. Raises ValueError/OSError when the image
    cannot be read, DataError for a bad annotation file."""
    anno_datum = caffe_pb2.AnnotatedDatum()
    anno_datum.datum.CopyFrom(read_image_to_datum(filename, -1, height, width, is_color,
                                                  encoding, min_dim, max_dim))
    if not os.path.exists(labelfile):
        return anno_datum
    original = imread(filename, IMREAD_COLOR)
    ori_height, ori_width = int(original.shape[0]), int(original.shape[1])
    table = name_to_label or {}
    if label_type == "xml":
        read_xml_to_annotated_datum(labelfile, ori_height, ori_width, table, anno_datum)
    elif label_type == "json":
        read_json_to_annotated_datum(labelfile, ori_height, ori_width, table, anno_datum)
    elif label_type == "txt":
        read_txt_to_annotated_datum(labelfile, ori_height, ori_width, anno_datum)
    else:
        raise DataError(f"Unknown label file type: {label_type!r} (xml, json or txt)")
    return anno_datum


def annotated_datum_to_array(anno_datum: caffe_pb2.AnnotatedDatum | bytes
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(image, boxes) of an AnnotatedDatum (or its serialized bytes): the CxHxW image (decoded
    natively when encoded) and a float32 (G, 7) array of rows ``[label, instance_id, xmin,
    ymin, xmax, ymax, difficult]`` in stored order."""
    if isinstance(anno_datum, (bytes, bytearray, memoryview)):
        message = caffe_pb2.AnnotatedDatum()
        message.ParseFromString(bytes(anno_datum))
        anno_datum = message
    image = datum_to_image(anno_datum.datum)
    rows = [(group.group_label, anno.instance_id, anno.bbox.xmin, anno.bbox.ymin,
             anno.bbox.xmax, anno.bbox.ymax, float(anno.bbox.difficult))
            for group in anno_datum.annotation_group for anno in group.annotation]
    return image, np.asarray(rows, dtype=np.float32).reshape(-1, 7)
