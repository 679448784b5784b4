"""Regenerate ``caffe_pb2.py`` from ``caffe.proto`` (run after editing the schema).

    python caffe/proto/regenerate.py

Runs protoc from ``grpcio-tools`` (``python -m grpc_tools.protoc``), then removes the
protobuf runtime-version check that protoc releases since 26 may write into generated
code: that check refuses to import under any protobuf runtime older than the protoc
that generated the file, although the code itself only needs the ``builder`` API that
protobuf 3.20 introduced. Without it the module imports under protobuf 3.20 and every
later release (3.19 and older lack ``google.protobuf.internal.builder``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "caffe.proto"
OUTPUT = HERE / "caffe_pb2.py"

# `from google.protobuf import runtime_version as _runtime_version`
_IMPORT_RE = re.compile(r"^from google\.protobuf import runtime_version as _runtime_version\n",
                        re.MULTILINE)
# `_runtime_version.ValidateProtobufRuntimeVersion(\n  ...,\n  'caffe.proto'\n)`
_CHECK_RE = re.compile(r"^_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n",
                       re.MULTILINE)


def strip_runtime_check(source: str) -> str:
    """Return generated code without the runtime-version import and check."""
    source = _IMPORT_RE.sub("", source)
    source = _CHECK_RE.sub("", source)
    if "_runtime_version" in source:
        raise RuntimeError("protoc output still refers to _runtime_version; "
                           "update strip_runtime_check for this protoc release")
    return source


def run_protoc(proto: Path, out_dir: Path) -> Path:
    """Compile ``proto`` with grpc_tools' protoc into ``out_dir``; return the _pb2 path."""
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={proto.parent}",
           f"--python_out={out_dir}", proto.name]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed ({result.returncode}):\n{result.stderr}")
    return out_dir / (proto.stem + "_pb2.py")


def main() -> int:
    """Regenerate caffe_pb2.py from caffe.proto with protoc."""
    with tempfile.TemporaryDirectory() as tmp:
        generated = run_protoc(PROTO, Path(tmp))
        source = strip_runtime_check(generated.read_text(encoding="utf-8"))
    OUTPUT.write_text(source, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
