"""Regenerates fs3_pb2.py and fs3_pb2_grpc.py from fs3.proto: ``python -m fs3.proto.generate``.

Run from anywhere; needs grpcio-tools (in the ``test`` extra). The generated files are
committed so that installing fs3 needs no code generator.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    # Generating from the repository root makes the imports read ``from fs3.proto import ...``.
    return protoc.main(
        [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={ROOT}",
            f"--pyi_out={ROOT}",
            f"--grpc_python_out={ROOT}",
            str(ROOT / "fs3" / "proto" / "fs3.proto"),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
