"""Regenerate the protobuf and gRPC modules: ``python -m protos.generate``.

Runs grpcio-tools' protoc on every ``protos/*.proto`` (import root = repo root, so
generated imports read ``from protos import x_pb2``) and then points each generated
``_pb2`` module at the private descriptor pool (see ``protos/_pool.py``).
``--check`` regenerates into a temporary directory and exits 1 if anything differs
from the committed files (CI runs it).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = "protos"

_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = "_private_pool.POOL.AddSerializedFile("


def _generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # build-time dependency only (extra "test")

    protos = sorted((ROOT / PKG).glob("*.proto"))
    if not protos:
        raise SystemExit("no .proto files found")
    (out_root / PKG).mkdir(parents=True, exist_ok=True)
    rel = [str(p.relative_to(ROOT)) for p in protos]
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *rel,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted((out_root / PKG).glob("*_pb2*.py*"))
    for path in generated:
        if path.name.endswith("_pb2.py"):
            text = path.read_text()
            if _DEFAULT_POOL not in text:
                raise SystemExit(f"unexpected generated code layout in {path.name}")
            text = text.replace(_DEFAULT_POOL, _PRIVATE_POOL)
            text = text.replace(
                "from google.protobuf.internal import builder as _builder\n",
                "from google.protobuf.internal import builder as _builder\n"
                "from protos import _pool as _private_pool\n",
            )
            path.write_text(text)
    return generated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    with tempfile.TemporaryDirectory() as tmp:
        generated = _generate(Path(tmp))
        changed = []
        for path in generated:
            target = ROOT / PKG / path.name
            new = path.read_bytes()
            if not target.exists() or target.read_bytes() != new:
                changed.append(path.name)
                if not check:
                    shutil.copyfile(path, target)
        names = {p.name for p in generated}
        stale = [p.name for p in (ROOT / PKG).glob("*_pb2*.py*") if p.name not in names]
    if check:
        if changed or stale:
            print(f"generated code is out of date: {sorted(changed + stale)}; run python -m protos.generate")
            return 1
        print(f"generated code up to date ({len(generated)} files)")
        return 0
    print(f"regenerated {len(changed)} of {len(generated)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
