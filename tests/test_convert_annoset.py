"""convert_annoset (SSD's tool) and caffe.io's annotation / label-map helpers, read back."""

import json

import numpy as np
import pytest

import caffe.io
from caffe.data import db as dbmod
from caffe.data import image as cvimage
from caffe.errors import CaffeError, DataError, ProtoError
from caffe.proto import caffe_pb2
from caffe.tools import cli, convert_annoset

LABEL_MAP = """
item { name: "none_of_the_above" label: 0 display_name: "background" }
item { name: "cat" label: 1 display_name: "Cat" }
item { name: "dog" label: 2 display_name: "Dog" }
"""

# Per image: (height, width, [(name, xmin, ymin, xmax, ymax, difficult), ...]).
OBJECTS = [
    (6, 10, [("dog", 1, 2, 4, 5, 0), ("cat", 0, 0, 9, 6, 0), ("dog", 5, 1, 10, 3, 1)]),
    (8, 5, [("cat", 2, 2, 3, 7, 1)]),
]
LABELS = {"cat": 1, "dog": 2}


def voc_xml(height, width, objects):
    parts = [f"<annotation>\n  <filename>x.png</filename>\n  <size><width>{width}</width>"
             f"<height>{height}</height><depth>3</depth></size>"]
    for name, x0, y0, x1, y1, difficult in objects:
        parts.append(f"  <object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
                     f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    return "\n".join(parts) + "\n</annotation>\n"


def coco_json(height, width, objects):
    return json.dumps({"image": {"height": height, "width": width},
                       "annotation": [{"category_id": name, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                       "iscrowd": difficult}
                                      for name, x0, y0, x1, y1, difficult in objects]})


def expected_boxes(height, width, objects):
    """Rows [label, instance_id, xmin, ymin, xmax, ymax, difficult]: grouped by label in the
    order labels first appear, instance ids counting within the group; coordinates divided
    by the size in float32, as the fork stores them."""
    groups = {}
    for name, x0, y0, x1, y1, difficult in objects:
        groups.setdefault(LABELS[name], []).append((x0, y0, x1, y1, difficult))
    w, h = np.float32(width), np.float32(height)
    return np.asarray([(label, k, np.float32(x0) / w, np.float32(y0) / h, np.float32(x1) / w,
                        np.float32(y1) / h, d)
                       for label, boxes in groups.items()
                       for k, (x0, y0, x1, y1, d) in enumerate(boxes)], dtype=np.float32)


@pytest.fixture
def annoset(tmp_path):
    """Two PNG images with VOC XML and JSON annotations, a label map and list files."""
    rng = np.random.default_rng(3)
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "xml").mkdir()
    (root / "json").mkdir()
    images = []
    for i, (height, width, objects) in enumerate(OBJECTS):
        img = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        images.append(img.transpose(2, 0, 1))
        (root / "img" / f"{i}.png").write_bytes(cvimage.imencode(img, "png"))
        (root / "xml" / f"{i}.xml").write_text(voc_xml(height, width, objects))
        (root / "json" / f"{i}.json").write_text(coco_json(height, width, objects))
    (tmp_path / "labelmap.prototxt").write_text(LABEL_MAP)
    for kind in ("xml", "json"):
        (tmp_path / f"list_{kind}.txt").write_text("".join(
            f"img/{i}.png {kind}/{i}.{kind}\n" for i in range(len(OBJECTS))))
    return tmp_path, f"{root}/", images


def convert(tmp_path, root, *flags, kind="xml", out="db"):
    args = ["-anno_type", "detection", "-label_map_file", str(tmp_path / "labelmap.prototxt"),
            "-label_type", kind, *flags, root, str(tmp_path / f"list_{kind}.txt"),
            str(tmp_path / out)]
    assert convert_annoset.main(args) == 0
    with dbmod.open_db(tmp_path / out, dbmod.READ) as db:
        return list(db.new_cursor())


@pytest.mark.parametrize("kind", ["xml", "json"])
@pytest.mark.parametrize("flags", [[], ["-encode_type", "png"], ["-encoded"]])
def test_annotations_and_pixels_read_back_as_written(annoset, kind, flags):
    tmp_path, root, images = annoset
    records = convert(tmp_path, root, *flags, kind=kind)
    assert [k for k, _ in records] == [f"{i:08d}_img/{i}.png" for i in range(len(OBJECTS))]
    for (_, value), img, (height, width, objects) in zip(records, images, OBJECTS):
        anno = caffe_pb2.AnnotatedDatum.FromString(value)
        assert anno.type == caffe_pb2.AnnotatedDatum.BBOX
        assert anno.datum.label == -1
        assert anno.datum.encoded == bool(flags)
        if flags == ["-encode_type", "png"]:
            # no resize, extension matches: the file's own bytes (ReadFileToDatum)
            assert anno.datum.channels == 0
        elif flags == ["-encoded"]:
            # the fork guesses '.png' (with the dot): never matches, so it re-encodes
            assert anno.datum.channels == 3
        pixels, boxes = caffe.io.annotated_datum_to_array(value)
        np.testing.assert_array_equal(pixels, img)  # PNG and raw bytes are lossless
        np.testing.assert_array_equal(boxes, expected_boxes(height, width, objects))


def test_resize_and_min_dim_keep_boxes_normalized_to_the_original(annoset):
    tmp_path, root, _ = annoset
    records = convert(tmp_path, root, "-resize_height", "4", "-resize_width", "7", out="r")
    pixels, boxes = caffe.io.annotated_datum_to_array(records[0][1])
    assert pixels.shape == (3, 4, 7)
    np.testing.assert_array_equal(boxes, expected_boxes(*OBJECTS[0]))
    # min_dim 12: 6x10 scales by 2 to 12x20; 8x5 by 2.4 to round(19.2) x 12 = 19x12
    records = convert(tmp_path, root, "-min_dim", "12", out="m")
    shapes = [caffe.io.annotated_datum_to_array(v)[0].shape for _, v in records]
    assert shapes == [(3, 12, 20), (3, 19, 12)]
    # max_dim 8 caps the long side: 6x10 by 0.8 to 5x8 (4.8 rounds to 5)
    records = convert(tmp_path, root, "-max_dim", "8", "-gray", out="x")
    assert caffe.io.annotated_datum_to_array(records[0][1])[0].shape == (1, 5, 8)


def test_check_size_refuses_images_of_different_sizes(annoset):
    tmp_path, root, _ = annoset
    with pytest.raises(DataError, match="Incorrect data field size 120"):
        convert(tmp_path, root, "-check_size")
    assert not (tmp_path / "db").exists()  # written atomically: nothing left behind
    convert(tmp_path, root, "-check_size", "-resize_height", "4", "-resize_width", "4")


def test_bad_xml_and_unknown_names_name_the_file_and_line(annoset):
    tmp_path, root, _ = annoset
    bad = tmp_path / "root" / "xml" / "1.xml"
    bad.write_text("<annotation>\n<size><width>5</width>\n</annotation>\n")
    with pytest.raises(DataError, match=rf"{bad}:3: cannot parse XML annotation: mismatched"):
        convert(tmp_path, root)
    bad.write_text(voc_xml(8, 5, [("cat", 1, 1, 2, 2, 0)]).replace(
        "<name>cat</name>", "\n<name>bird</name>"))
    with pytest.raises(DataError, match=rf"{bad}:5: Unknown name: 'bird'"):
        convert(tmp_path, root, out="db2")
    # ... and through the command line: one error line, exit status 1
    listing = str(tmp_path / "list_xml.txt")
    assert cli.run("convert_annoset", ["-anno_type", "detection", "-label_map_file",
                                       str(tmp_path / "labelmap.prototxt"), root, listing,
                                       str(tmp_path / "db3")]) == 1


def test_missing_annotation_file_keeps_the_image_without_boxes(annoset):
    tmp_path, root, images = annoset
    (tmp_path / "root" / "xml" / "1.xml").unlink()
    records = convert(tmp_path, root)
    pixels, boxes = caffe.io.annotated_datum_to_array(records[1][1])
    np.testing.assert_array_equal(pixels, images[1])
    assert boxes.shape == (0, 7)


def test_txt_annotations_and_classification_lists(annoset):
    tmp_path, root, images = annoset
    (tmp_path / "root" / "0.txt").write_text("3 1 2 4 5\n3 0 0 10 6\n1 2 3 4 5\n")
    (tmp_path / "list_txt.txt").write_text("img/0.png 0.txt\n")
    records = convert(tmp_path, root, kind="txt")
    _, boxes = caffe.io.annotated_datum_to_array(records[0][1])
    w, h = np.float32(10), np.float32(6)
    np.testing.assert_array_equal(boxes[:, :2], [[3, 0], [3, 1], [1, 0]])
    np.testing.assert_array_equal(boxes[1, 2:6], [0, 0, np.float32(10) / w, np.float32(6) / h])
    (tmp_path / "cls.txt").write_text("img/1.png 7\n")
    assert convert_annoset.main([root, str(tmp_path / "cls.txt"), str(tmp_path / "cls")]) == 0
    with dbmod.open_db(tmp_path / "cls", dbmod.READ) as db:
        (_, value), = list(db.new_cursor())
    anno = caffe_pb2.AnnotatedDatum.FromString(value)
    assert anno.datum.label == 7 and not anno.annotation_group
    np.testing.assert_array_equal(caffe.io.annotated_datum_to_array(anno)[0], images[1])


def test_label_map_read_write_and_lookups(tmp_path):
    path = tmp_path / "lm.prototxt"
    path.write_text(LABEL_MAP)
    label_map = caffe.io.read_label_map(str(path))
    assert caffe.io.name_to_label(label_map) == {"none_of_the_above": 0, "cat": 1, "dog": 2}
    assert caffe.io.label_to_name(label_map) == {0: "none_of_the_above", 1: "cat", 2: "dog"}
    assert caffe.io.label_to_display_name(label_map)[1] == "Cat"
    caffe.io.write_label_map(label_map, str(tmp_path / "copy.prototxt"))
    assert caffe.io.read_label_map(str(tmp_path / "copy.prototxt")) == label_map
    label_map.item.add(name="cat", label=1, display_name="again")
    with pytest.raises(DataError, match="There are many duplicates of name: cat"):
        caffe.io.name_to_label(label_map)
    with pytest.raises(DataError, match="There are many duplicates of label: 1"):
        caffe.io.label_to_name(label_map)
    # without the strict check the last entry wins, as std::map's operator[]
    assert caffe.io.label_to_display_name(label_map, strict_check=False)[1] == "again"
    (tmp_path / "bad.prototxt").write_text("item { nam: 'x' }")
    with pytest.raises(ProtoError, match="bad.prototxt:1"):
        caffe.io.read_label_map(str(tmp_path / "bad.prototxt"))


def test_check_label_refuses_duplicate_names_in_the_label_map(annoset):
    tmp_path, root, _ = annoset
    (tmp_path / "labelmap.prototxt").write_text(LABEL_MAP + 'item { name: "dog" label: 3 }\n')
    with pytest.raises(DataError, match="labelmap.prototxt: There are many duplicates of name"):
        convert(tmp_path, root, "-check_label")
    # unchecked, the later 'dog' (3) is used
    records = convert(tmp_path, root, out="db2")
    assert set(caffe.io.annotated_datum_to_array(records[0][1])[1][:, 0]) == {1, 3}


def test_label_file_to_label_map(tmp_path):
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    label_map = caffe.io.label_file_to_label_map(str(tmp_path / "names.txt"))
    assert [(i.name, i.label, i.display_name) for i in label_map.item] == [
        ("none_of_the_above", 0, "background"), ("cat", 1, "cat"), ("dog", 2, "dog")]
    (tmp_path / "three.txt").write_text("n01 5 tench\nn02 9 goldfish\n")
    label_map = caffe.io.label_file_to_label_map(str(tmp_path / "three.txt"), False)
    assert [(i.name, i.label, i.display_name) for i in label_map.item] == [
        ("n01", 5, "tench"), ("n02", 9, "goldfish")]
    (tmp_path / "mixed.txt").write_text("a 1\nb\n")
    with pytest.raises(DataError, match="mixed.txt:2: Inconsistent number of fields"):
        caffe.io.label_file_to_label_map(str(tmp_path / "mixed.txt"))


def test_cli_discovers_the_tool_and_its_console_script():
    assert "convert_annoset" in cli.commands()
    assert callable(cli.convert_annoset)
    with pytest.raises(CaffeError, match="needs -label_map_file"):
        convert_annoset.main(["-anno_type", "detection", "r/", "l.txt", "db"])


def test_the_forks_create_annoset_command_line_runs(annoset):
    """scripts/create_annoset.py's flags: --flag=value, booleans as True/False, empty
    encode_type."""
    tmp_path, root, images = annoset
    args = ["--anno_type=detection", "--label_type=xml",
            f"--label_map_file={tmp_path / 'labelmap.prototxt'}", "--check_label=True",
            "--min_dim=0", "--max_dim=0", "--resize_height=0", "--resize_width=0",
            "--backend=lmdb", "--shuffle=False", "--check_size=False", "--encode_type=",
            "--encoded=False", "--gray=False", root, str(tmp_path / "list_xml.txt"),
            str(tmp_path / "fork_db")]
    assert cli.run("convert_annoset", args) == 0
    with dbmod.open_db(tmp_path / "fork_db", dbmod.READ) as db:
        (_, first), _ = list(db.new_cursor())
    pixels, boxes = caffe.io.annotated_datum_to_array(first)
    np.testing.assert_array_equal(pixels, images[0])
    np.testing.assert_array_equal(boxes, expected_boxes(*OBJECTS[0]))


def test_get_image_size_writes_the_name_size_file(annoset):
    tmp_path, root, _ = annoset
    out = tmp_path / "name_size.txt"
    assert cli.run("get_image_size", [root, str(tmp_path / "list_xml.txt"), str(out)]) == 0
    assert out.read_text() == "0 6 10\n1 8 5\n"
    (tmp_path / "ids.txt").write_text("0 17\n1 4\n")
    assert cli.run("get_image_size", ["-name_id_file", str(tmp_path / "ids.txt"), root,
                                      str(tmp_path / "list_xml.txt"), str(out)]) == 0
    assert out.read_text() == "17 6 10\n4 8 5\n"
