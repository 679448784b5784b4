"""Model files read and write where they say (#14 item 6) and the rest of item 7.

Untrusted nets (Python layers refused) keep every file their layers name inside a file root
(the prototxt's folder, ``file_root=`` or ``CAFFE_FILE_ROOT``); HDF5Output writes nothing when
the net is built; errors quote only a short escaped prefix of what they read; errors copying
weights name the file and the layer; temporaries of killed atomic writes are cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import caffe
from caffe import protoio
from caffe.errors import DataError, NetError
from caffe.proto import caffe_pb2

from data_case import random_images, write_db

h5py = pytest.importorskip("h5py")

OUTPUT_NET = """
layer {{ name: 'in' type: 'Input' top: 'data' top: 'label'
        input_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 dim: 1 }} }} }}
layer {{ name: 'out' type: 'HDF5Output' bottom: 'data' bottom: 'label'
        hdf5_output_param {{ file_name: '{file_name}' }} }}
"""


def _model(folder, text: str, name: str = "net.prototxt"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _data_net(source) -> str:
    return (f"layer {{ name: 'data' type: 'Data' top: 'data' top: 'label'\n"
            f"  data_param {{ source: '{source}' batch_size: 2 backend: LMDB }} }}\n")


# --- HDF5Output writes on forward only -----------------------------------------------------
def test_hdf5_output_does_not_replace_the_file_when_the_net_is_built(tmp_path):
    target = tmp_path / "precious.h5"
    target.write_bytes(b"not yours to clobber")
    net_path = _model(tmp_path, OUTPUT_NET.format(file_name=target))
    net = caffe.Net(str(net_path), caffe.TEST)
    assert target.read_bytes() == b"not yours to clobber"
    net.blobs["data"].data[...] = np.arange(6).reshape(2, 3)
    net.forward()
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["data"][()].reshape(2, 3), np.arange(6).reshape(2, 3))


def test_hdf5_output_into_a_missing_folder_fails_at_setup(tmp_path):
    net_path = _model(tmp_path, OUTPUT_NET.format(file_name=tmp_path / "nope" / "o.h5"))
    with pytest.raises(DataError, match=r"layer 'out'.*folder .*nope.* does not exist"):
        caffe.Net(str(net_path), caffe.TEST)


# --- file roots in untrusted mode ----------------------------------------------------------
def test_untrusted_hdf5_output_outside_the_root_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.h5"
    net_path = _model(tmp_path / "model", OUTPUT_NET.format(file_name=outside))
    with pytest.raises(DataError, match=r"net.prototxt:\d+: layer 'out': "
                                        r"hdf5_output_param.file_name .*elsewhere.h5.* is "
                                        r"outside the allowed file root"):
        caffe.Net(str(net_path), caffe.TEST, allow_python_layers=False)
    # Inside the model's folder it is fine; trusted mode (the default) is unrestricted.
    inside = _model(tmp_path / "model", OUTPUT_NET.format(file_name=tmp_path / "model" / "o.h5"),
                    "inside.prototxt")
    caffe.Net(str(inside), caffe.TEST, allow_python_layers=False)
    caffe.Net(str(net_path), caffe.TEST)
    assert not outside.exists()


def test_untrusted_data_source_outside_the_root_is_refused(tmp_path, monkeypatch):
    write_db(tmp_path / "lmdb", random_images(2), [0, 1])
    net_path = _model(tmp_path / "model", _data_net(tmp_path / "lmdb"))
    with pytest.raises(DataError, match=r"layer 'data': data_param.source .*lmdb.* is outside"):
        caffe.Net(str(net_path), caffe.TEST, allow_python_layers=False)
    # A relative path that climbs out of the root is refused the same way.
    monkeypatch.chdir(tmp_path / "model")
    climbing = _model(tmp_path / "model", _data_net("../lmdb"), "climb.prototxt")
    with pytest.raises(DataError, match=r"'../lmdb' is outside the allowed file root"):
        caffe.Net(str(climbing), caffe.TEST, allow_python_layers=False)
    # An explicit root (argument or environment) allows it.
    net = caffe.Net(str(net_path), caffe.TEST, allow_python_layers=False, file_root=tmp_path)
    assert net.blobs["data"].shape[0] == 2
    del net
    monkeypatch.setenv("CAFFE_FILE_ROOT", str(tmp_path))
    caffe.Net(str(climbing), caffe.TEST, allow_python_layers=False)


def test_untrusted_symlink_out_of_the_root_is_refused(tmp_path):
    write_db(tmp_path / "lmdb", random_images(2), [0, 1])
    (tmp_path / "model").mkdir()
    os.symlink(tmp_path / "lmdb", tmp_path / "model" / "link")
    net_path = _model(tmp_path / "model", _data_net(tmp_path / "model" / "link"))
    with pytest.raises(DataError, match="outside the allowed file root"):
        caffe.Net(str(net_path), caffe.TEST, allow_python_layers=False)


def test_untrusted_mean_file_and_hdf5_list_entries_are_checked(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    with h5py.File(tmp_path / "outside.h5", "w") as f:
        f["data"] = np.zeros((2, 3), np.float32)
    (model / "list.txt").write_text("../outside.h5\n")
    net_path = _model(model, f"""
        layer {{ name: 'h5' type: 'HDF5Data' top: 'data'
                hdf5_data_param {{ source: '{model / "list.txt"}' batch_size: 2 }} }}
        """)
    with pytest.raises(DataError, match=r"layer 'h5'.*HDF5 file 1 listed in .*list.txt.* is "
                                        r"outside the allowed file root"):
        caffe.Net(str(net_path), caffe.TEST, allow_python_layers=False)
    mean = _model(model, f"""
        layer {{ name: 'd' type: 'Data' top: 'data'
                transform_param {{ mean_file: '{tmp_path / "mean.binaryproto"}' }}
                data_param {{ source: '{model}' batch_size: 1 }} }}
        """, "mean.prototxt")
    with pytest.raises(DataError, match=r"transform_param.mean_file .*mean.binaryproto"):
        caffe.Net(str(mean), caffe.TEST, allow_python_layers=False)


def test_untrusted_hdf5_list_entry_with_a_nul_byte_is_a_data_error(tmp_path):
    # The fuzz suite's find: os.path.realpath raised a bare ValueError (embedded null byte).
    (tmp_path / "list.txt").write_bytes(b"rows\x00.h5\n")
    net_path = _model(tmp_path, f"""
        layer {{ name: 'h5' type: 'HDF5Data' top: 'data'
                hdf5_data_param {{ source: '{tmp_path / "list.txt"}' batch_size: 2 }} }}
        """)
    with pytest.raises(DataError, match=r"layer 'h5'.*HDF5 file 1 listed in .* is not a valid "
                                        r"path"):
        caffe.Net(str(net_path), caffe.TEST, allow_python_layers=False)


# --- no echo of file contents ----------------------------------------------------------------
def test_hdf5_list_errors_quote_only_a_short_prefix(tmp_path):
    secret = "password=" + "s3cr3t-" * 20
    (tmp_path / "secrets.txt").write_text(secret + "\n")
    net_path = _model(tmp_path, f"""
        layer {{ name: 'h5' type: 'HDF5Data' top: 'data'
                hdf5_data_param {{ source: '{tmp_path / "secrets.txt"}' batch_size: 2 }} }}
        """)
    with pytest.raises(DataError) as info:
        caffe.Net(str(net_path), caffe.TEST)
    message = str(info.value)
    assert "Failed opening HDF5 file" in message and "password=s3cr3t" in message
    assert secret not in message and message.count("s3cr3t") <= 4


def test_prototxt_parse_errors_quote_only_a_short_prefix(tmp_path):
    secret = "-----BEGIN PRIVATE KEY-----" + "QUJD" * 100
    path = tmp_path / "id_rsa"
    path.write_text(secret + "\n")
    with pytest.raises(caffe.errors.ProtoError) as info:
        caffe.Net(str(path), caffe.TEST)
    message = str(info.value)
    assert message.startswith(f"{path}:1:") and secret[:20] in message
    assert "QUJD" * 30 not in message and len(message) < 600


def test_short_repr_escapes_and_cuts():
    from caffe import untrusted

    assert untrusted.short_repr("a\x1b[31mb\n", 5) == repr("a\x1b[31") + "..."
    assert untrusted.short_repr(b"\xff\xfeok") == repr("\\xff\\xfeok")


# --- weights errors name the file and the layer ----------------------------------------------
def test_caffemodel_blob_data_mismatch_names_file_and_layer(tmp_path):
    net_path = _model(tmp_path, """
        layer { name: 'in' type: 'Input' top: 'data' input_param { shape { dim: 1 dim: 3 } } }
        layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
                inner_product_param { num_output: 2 } }
        """)
    net = caffe.Net(str(net_path), caffe.TEST)
    weights = net.to_proto()
    del weights.layer[1].blobs[0].data[1:]  # shape 2x3, one value
    path = tmp_path / "w.caffemodel"
    path.write_bytes(weights.SerializeToString())
    with pytest.raises(NetError, match=r"w.caffemodel: layer 'ip', param 0: from_proto: 1 "
                                       r"values for a blob of shape 2 3"):
        net.copy_from(str(path))


# --- stale temporaries of killed atomic writes ------------------------------------------------
def test_stale_temporaries_of_dead_writers_are_removed(tmp_path, monkeypatch):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    host = protoio._host()
    stale = tmp_path / f".tmp-snap_iter_100.caffemodel.{host}.{dead_pid}.caffe-abc123"
    live = tmp_path / f".tmp-snap_iter_200.caffemodel.{host}.1.caffe-def456"  # pid 1 lives
    foreign = tmp_path / f".tmp-snap_iter_300.caffemodel.otherhost.{dead_pid}.caffe-x1"
    for path in (stale, live, foreign):
        path.write_bytes(b"partial")
    monkeypatch.setattr(protoio, "_CLEANED_FOLDERS", set())
    protoio.write_binary_proto(tmp_path / "snap_iter_400.caffemodel", caffe_pb2.NetParameter())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert stale.name not in names
    assert live.name in names and foreign.name in names and "snap_iter_400.caffemodel" in names
