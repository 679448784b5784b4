"""convert_imageset, compute_image_mean and extract_features, and their DBs read back."""

import logging

import numpy as np
import pytest

from caffe.data import db as dbmod
from caffe.data import image as cvimage
from caffe.data.datum import parse_datum
from caffe.data.transformer import load_mean_file
from caffe.errors import CaffeError, DataError
from caffe.tools import cli, compute_image_mean, convert_imageset, extract_features

from data_case import GOLDEN_DATA, golden_data, make_data_layer, run_batches, setup_layer
from tolerance import matmul_atol

HAS_PLYVEL = __import__("importlib").util.find_spec("plyvel") is not None
BACKENDS = ["lmdb", pytest.param("leveldb", marks=pytest.mark.skipif(
    not HAS_PLYVEL, reason="plyvel not installed"))]
DB_ENUM = {"lmdb": "LMDB", "leveldb": "LEVELDB"}


@pytest.fixture
def image_set(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 3, 6, 5), dtype=np.uint8)
    root = tmp_path / "images"
    root.mkdir()
    lines = []
    for i, img in enumerate(images):
        name = f"pic{i}.png"
        (root / name).write_bytes(cvimage.imencode(np.ascontiguousarray(img.transpose(1, 2, 0)),
                                                   "png"))
        lines.append(f"{name} {i % 3}")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    return f"{root}/", str(listing), images


def read_back(path, backend, batches=1, batch_size=5):
    layer = make_data_layer(f"type: 'Data' data_param {{ source: '{path}' "
                            f"backend: {DB_ENUM[backend]} batch_size: {batch_size} }}")
    top = setup_layer(layer)
    out = run_batches(layer, top, batches)
    layer.stop_prefetch()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flags", [[], ["-encoded"], ["-encode_type", "png"]])
def test_convert_imageset_read_back_by_data_layer_exactly(tmp_path, image_set, backend, flags):
    root, listing, images = image_set
    out = tmp_path / "out_db"
    assert convert_imageset.main([*flags, "-backend", backend, root, listing, str(out)]) == 0
    with dbmod.open_db(out, dbmod.READ, backend) as db:
        records = list(db.new_cursor())
    assert [k for k, _ in records] == [f"{i:08d}_pic{i}.png" for i in range(5)]
    datum = parse_datum(records[0][1])
    assert datum.encoded == bool(flags)
    if flags == ["-encoded"]:  # the file's own bytes, as Caffe's ReadFileToDatum stores them
        assert datum.data == (tmp_path / "images" / "pic0.png").read_bytes()
    data, labels = read_back(out, backend)
    np.testing.assert_array_equal(data, images)
    np.testing.assert_array_equal(labels, [0, 1, 2, 0, 1])


def test_convert_imageset_gray_resize_shuffle_check_size(tmp_path, image_set):
    root, listing, images = image_set
    out = tmp_path / "gray_db"
    assert convert_imageset.main(["-gray", "-resize_height=4", "-resize_width", "3",
                                  "-shuffle", "-check_size", root, listing, str(out)]) == 0
    with dbmod.open_db(out) as db:
        records = list(db.new_cursor())
    names = [k.split("_", 1)[1] for k, _ in records]
    assert sorted(names) == [f"pic{i}.png" for i in range(5)]
    for key, value in records:
        datum = parse_datum(value)
        i = int(key.split("pic")[1][0])
        assert (datum.channels, datum.height, datum.width, datum.label) == (1, 4, 3, i % 3)
        path = f"{root}pic{i}.png"
        gray = cvimage.resize(cvimage.imread(path, cvimage.IMREAD_GRAYSCALE), 3, 4)
        np.testing.assert_array_equal(np.frombuffer(datum.data, np.uint8).reshape(4, 3), gray)


def test_convert_imageset_skips_unreadable_and_refuses_existing(tmp_path, image_set, caplog):
    root, listing, _ = image_set
    with open(listing, "a") as f:
        f.write("missing.png 2\n")
    out = tmp_path / "db"
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert convert_imageset.main([root, listing, str(out)]) == 0
    assert "Could not open or find file" in caplog.text and "Processed 5 files." in caplog.text
    with dbmod.open_db(out) as db:
        assert len(db) == 5
    with pytest.raises(DataError, match="already exists"):
        convert_imageset.main([root, listing, str(out)])
    assert convert_imageset.main([root, listing]) == 1  # usage


def test_convert_imageset_check_size_rejects_mixed_sizes(tmp_path, image_set):
    root, listing, _ = image_set
    (tmp_path / "images" / "big.png").write_bytes(
        cvimage.imencode(np.zeros((9, 9, 3), np.uint8), "png"))
    with open(listing, "a") as f:
        f.write("big.png 0\n")
    out = tmp_path / "db"
    with pytest.raises(DataError, match="Incorrect data field size"):
        convert_imageset.main(["-check_size", root, listing, str(out)])
    assert not out.exists()  # nothing half-written


def test_compute_image_mean_reproduces_golden_mean(tmp_path, caplog):
    out = tmp_path / "mean.binaryproto"
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert compute_image_mean.main([str(GOLDEN_DATA / "images_lmdb"), str(out)]) == 0
    golden = load_mean_file(str(GOLDEN_DATA / "mean.binaryproto"))
    ours = load_mean_file(str(out))
    assert ours.shape == golden.shape == (3, 9, 8)
    # Bit-exact float32 values.
    np.testing.assert_array_equal(ours.view(np.uint32), golden.view(np.uint32))
    np.testing.assert_array_equal(ours, golden_data()["mean"][0])
    from caffe.proto import caffe_pb2

    proto = caffe_pb2.BlobProto.FromString(out.read_bytes())
    assert (proto.num, proto.channels, proto.height, proto.width) == (1, 3, 9, 8)
    assert "Number of channels: 3" in caplog.text
    for c in range(3):
        assert f"mean_value channel [{c}]: {float(golden[c].mean()):.6g}" in caplog.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_compute_image_mean_of_encoded_db(tmp_path, image_set, backend):
    root, listing, images = image_set
    out = tmp_path / "db"
    convert_imageset.main(["-encoded", "-backend", backend, root, listing, str(out)])
    mean, count = compute_image_mean.compute_mean(str(out), backend)
    assert count == 5
    np.testing.assert_array_equal(mean, images.astype(np.float32).sum(0) / np.float32(5))
    with pytest.raises(DataError, match="nothing_here"):
        compute_image_mean.compute_mean(str(tmp_path / "nothing_here"), backend)


def test_tools_are_discovered_by_the_cli():
    table = cli.commands()
    for name in ("convert_imageset", "compute_image_mean", "extract_features"):
        assert name in table and callable(table[name].main)


def test_cli_runs_a_tool_and_reports_errors(tmp_path, capsys):
    code = cli.main(["compute_image_mean", str(tmp_path / "absent_db")])
    assert code == 1
    assert "absent_db" in capsys.readouterr().err


NET = """
name: "feat"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{source}" backend: LMDB batch_size: 3 }}
  transform_param {{ scale: 0.01 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.1 }}
                         bias_filler {{ type: "constant" value: 0.5 }} }} }}
layer {{ name: "silence" type: "Silence" bottom: "label" }}
"""


def test_extract_features_matches_net_outputs(tmp_path):
    net_module = pytest.importorskip("caffe.net")
    from caffe.proto import caffe_pb2

    from data_case import random_images, write_db

    images = random_images(4, shape=(1, 3, 2))
    write_db(tmp_path / "in_db", images, range(4))
    proto = tmp_path / "net.prototxt"
    proto.write_text(NET.format(source=tmp_path / "in_db"))
    net = net_module.Net(str(proto), caffe_pb2.TEST)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    w, b = net.params["ip"][0].data.copy(), net.params["ip"][1].data.copy()
    out_ip, out_data = tmp_path / "ip_db", tmp_path / "data_db"
    assert extract_features.main([str(weights), str(proto), "ip,data", f"{out_ip},{out_data}",
                                  "2", "lmdb", "CPU"]) == 0
    with dbmod.open_db(out_ip) as db:
        records = list(db.new_cursor())
    assert [k for k, _ in records] == [f"{i:010d}" for i in range(6)]
    feats = np.stack([np.asarray(parse_datum(v).float_data, np.float32) for _, v in records])
    x = images[[0, 1, 2, 3, 0, 1]].reshape(6, -1).astype(np.float32) * np.float32(0.01)
    # numpy's float32 matmul sums in its own order: atol from the terms' sizes (tolerance.py).
    np.testing.assert_allclose(feats, x @ w.T + b, rtol=1e-5, atol=matmul_atol(x, w.T, b))
    datum = parse_datum(records[0][1])
    assert (datum.channels, datum.height, datum.width) == (4, 1, 1)
    with dbmod.open_db(out_data) as db:
        first = parse_datum(next(iter(db.new_cursor()))[1])
    assert (first.channels, first.height, first.width) == (1, 3, 2)
    with pytest.raises(CaffeError, match="Unknown feature blob name nope"):
        extract_features.main([str(weights), str(proto), "nope", str(tmp_path / "x"), "1",
                               "lmdb"])
    assert extract_features.main([str(weights)]) == 1
