"""The optional model schema file (``schema.json``), in the ModelMesh / MLServer style::

    {"inputs":  [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
     "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]}

``shape`` may be omitted (rank unknown: not checked). Datatypes are V2 names (upper-cased
when read). A schema names and types the tensors of models that cannot describe
themselves (TorchScript, XGBoost); ONNX and torch.export models describe themselves and
their schema file is ignored.

``schema_path`` is confined to the model's directory (the artifact's directory, or the
directory holding a single-file artifact): it must be relative, without ``..``, and its real
path (symlinks followed, chains included) must stay inside; otherwise the load fails with
the same message whether the file outside exists or not. Messages name the schema only as
the caller wrote it (never a path of the host).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ._errors import ModelLoadError
from ._tensors import DATATYPES
from ._types import ModelSpec, TensorMetadata

SCHEMA_FILE = "schema.json"


@dataclass(frozen=True)
class Schema:
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    # names of tensors whose shape was absent from the file (rank unknown)
    shapeless: frozenset[str] = frozenset()


def _inside(path: Path, base: Path) -> Path | None:
    """``path``'s real path when it lies inside ``base``'s real path, else None (blocking)."""
    real, real_base = Path(os.path.realpath(path)), Path(os.path.realpath(base))
    return real if real == real_base or real.is_relative_to(real_base) else None


def schema_file(spec: ModelSpec, model_file: Path) -> Path | None:
    """The schema file for a model: ``spec.schema_path`` (relative, inside the model's
    directory), else ``schema.json`` beside the model file; ``None`` when there is none."""
    base = model_file.parent
    if spec.schema_path:
        given = spec.schema_path
        rel = PurePosixPath(given.replace("\\", "/"))
        outside = ModelLoadError(
            f"model '{spec.model_id}': schema_path {given!r} must name a file inside the model's own directory"
        )
        if "\x00" in given or rel.is_absolute() or ".." in rel.parts or given[1:2] == ":":
            raise outside  # judged before any file-system access
        real = _inside(base / rel, base)
        if real is None:
            raise outside
        if not real.is_file():
            raise ModelLoadError(f"model '{spec.model_id}': schema file {given!r} does not exist in the model's directory")
        return real
    p = base / SCHEMA_FILE
    if not p.is_file():
        return None
    real = _inside(p, base)
    if real is None:
        raise ModelLoadError(f"model '{spec.model_id}': {SCHEMA_FILE} resolves outside the model's directory")
    return real


def _tensors(doc: Any, key: str, path: Path, shapeless: set[str]) -> tuple[TensorMetadata, ...]:
    items = doc.get(key, [])
    if not isinstance(items, list):
        raise ModelLoadError(f"schema {path}: '{key}' must be a list")
    out: list[TensorMetadata] = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ModelLoadError(f"schema {path}: {key}[{n}] must be an object")
        name = item.get("name")
        datatype = item.get("datatype")
        if not isinstance(name, str) or not name:
            raise ModelLoadError(f"schema {path}: {key}[{n}] needs a string 'name'")
        if not isinstance(datatype, str) or datatype.upper() not in DATATYPES:
            raise ModelLoadError(f"schema {path}: {key}[{n}] '{name}' has unknown datatype {datatype!r}")
        shape = item.get("shape")
        if shape is None:
            shapeless.add(name)
            shape = [-1]
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
        ):
            raise ModelLoadError(f"schema {path}: {key}[{n}] '{name}' needs 'shape' as a list of ints >= -1")
        out.append(TensorMetadata(name=name, datatype=datatype.upper(), shape=tuple(shape)))
    if len({t.name for t in out}) != len(out):
        raise ModelLoadError(f"schema {path}: duplicate names in '{key}'")
    return tuple(out)


def read_schema(path: Path, display: str | None = None) -> Schema:
    """Parse a schema file; messages name it ``display`` (default: its file name)."""
    shown = Path(display or path.name)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read schema {shown}: {type(exc).__name__}") from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"cannot read schema {shown}: {exc}") from exc
    path = shown
    if not isinstance(doc, dict):
        raise ModelLoadError(f"schema {path}: must be a JSON object with 'inputs' and 'outputs'")
    shapeless: set[str] = set()
    inputs = _tensors(doc, "inputs", path, shapeless)
    outputs = _tensors(doc, "outputs", path, shapeless)
    return Schema(inputs=inputs, outputs=outputs, shapeless=frozenset(shapeless))


def load_schema(spec: ModelSpec, model_file: Path) -> Schema | None:
    path = schema_file(spec, model_file)
    return None if path is None else read_schema(path, spec.schema_path or SCHEMA_FILE)
