"""Coverage-guided fuzzing (atheris, libFuzzer) of the decoders behind the V2 and management edges.

Not collected by pytest and not run in CI. Run, from the repository root::

    python tests/fuzz/atheris_decoders.py -max_total_time=300 [corpus_dir]

Each input is routed by its first byte to one target, the same code paths the servers run:

* ``ModelInfer`` bytes: the router's name scan (``read_string_field``), the codec's parse, the
  V2 -> domain conversion and a real ONNX model's ``infer`` (input validation, decoding);
* V2 JSON: ``json.loads`` + ``infer_request_from_json`` + the same ``infer``, then the JSON
  rendering of the answer;
* ``modelInfo.key`` JSON: ``model_record_from_info`` (registration).

An exception that the status table maps to anything but INTERNAL is a clean refusal; any other
exception (or an INTERNAL one) is a finding, reported by atheris with the input that caused it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from mesh import _codec
    from mesh._errors import status_for
    from mesh._management import ModelInfoSpec, model_record_from_info
    from mesh._wire import read_string_field
    from runtime_adapters import AdapterSettings, ModelSpec, build_registry

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # a standalone script (not run by pytest): make the repo importable
from tests.model_factory import make_onnx_model  # noqa: E402


def main() -> None:
    loop = asyncio.new_event_loop()
    tmp = Path(tempfile.mkdtemp(prefix="atheris-"))
    model_path = make_onnx_model(tmp / "lin")
    registry = build_registry(AdapterSettings())
    model = loop.run_until_complete(registry.for_type("onnx").load(ModelSpec(model_id="lin", model_type="onnx"), model_path))

    def refused(exc: BaseException) -> bool:
        status, _ = status_for(exc)
        return status.grpc != grpc.StatusCode.INTERNAL

    def one(data: bytes) -> None:
        if not data:
            return
        kind, body = data[0] % 3, data[1:]
        try:
            if kind == 0:
                read_string_field(body, 1)
                req = _codec.infer_request_from_pb(_codec.parse_infer_request(body))
                resp = loop.run_until_complete(model.infer(req))
                _codec.infer_response_to_pb(resp).SerializeToString()
            elif kind == 1:
                try:
                    doc = json.loads(body)
                except (ValueError, RecursionError):
                    return  # the REST edge answers 400 for these before the codec sees them
                req = _codec.infer_request_from_json("lin", doc)
                resp = loop.run_until_complete(model.infer(req))
                json.dumps(_codec.infer_response_to_json(resp), allow_nan=False)
            else:
                key = body.decode("utf-8", "replace")
                model_record_from_info("fz", ModelInfoSpec(type="onnx", path="/nonexistent", key=key))
        except Exception as exc:
            if not refused(exc):
                raise

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
