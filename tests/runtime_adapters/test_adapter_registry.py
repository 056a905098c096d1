"""Registry, settings, error codes and the package's import boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import runtime_adapters
from runtime_adapters import (
    AdapterError,
    AdapterRegistry,
    AdapterSettings,
    DeviceUnavailable,
    InferenceFailed,
    InvalidInput,
    ModelLoadError,
    ModelNotLoaded,
    ModelSpec,
    OnnxAdapter,
    RequestTooLarge,
    RuntimeAdapter,
    RuntimeServerSettings,
    RuntimeStatus,
    TorchAdapter,
    UnsupportedModelType,
    XGBoostAdapter,
    build_registry,
)

PACKAGE = Path(runtime_adapters.__file__).parent

VOCABULARY = {
    "invalid_argument",
    "not_found",
    "already_exists",
    "failed_precondition",
    "resource_exhausted",
    "unavailable",
    "deadline_exceeded",
    "permission_denied",
    "unauthenticated",
    "internal",
    "unimplemented",
    "aborted",
    "load_failed",
}


async def test_build_registry_serves_every_installed_framework(registry: AdapterRegistry) -> None:
    assert set(registry.model_types) == {"onnx", "pytorch", "torchscript", "torch_export", "xgboost"}
    assert isinstance(registry.for_type("onnx"), OnnxAdapter)
    assert isinstance(registry.for_type(" PyTorch "), TorchAdapter)
    assert registry.for_type("TORCH_EXPORT") is registry.for_type("torchscript")
    assert isinstance(registry.for_type("XGBoost"), XGBoostAdapter)
    statuses = [await a.status() for a in registry.adapters]
    assert [s.name for s in statuses] == ["onnx", "torch", "xgboost"]
    assert all(s.ready and s.loaded_models == 0 and s.used_bytes == 0 for s in statuses)


async def test_unknown_type_names_itself(registry: AdapterRegistry) -> None:
    with pytest.raises(UnsupportedModelType) as err:
        registry.for_type("tensorflow")
    assert err.value.code == "invalid_argument"
    assert "'tensorflow'" in err.value.message and "onnx" in err.value.message


async def test_missing_framework_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TorchAdapter, "module", "surely_not_installed_framework")
    registry = build_registry(AdapterSettings())
    try:
        assert "pytorch" not in registry.model_types and "onnx" in registry.model_types
        with pytest.raises(UnsupportedModelType, match="'pytorch'"):
            registry.for_type("pytorch")
    finally:
        await registry.close()


async def test_framework_that_fails_to_initialise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(self: OnnxAdapter) -> None:
        raise ImportError("libonnxruntime.so: cannot open shared object file")

    monkeypatch.setattr(OnnxAdapter, "_initialise", broken)
    registry = build_registry(AdapterSettings())
    try:
        from tests import model_factory as mf

        path = mf.make_onnx_model(tmp_path)
        adapter = registry.for_type("onnx")
        for _ in range(2):  # the reason is kept
            with pytest.raises(ModelLoadError, match="cannot open shared object") as err:
                await adapter.load(ModelSpec("m", "onnx"), path)
            assert err.value.code == "load_failed"
        assert not (await adapter.status()).ready
    finally:
        await registry.close()


class _FakeAdapter(RuntimeAdapter):
    name = "fake"
    model_types = ("Fake", "other")

    def __init__(self) -> None:
        self.closed = False

    async def load(self, spec: ModelSpec, local_path: Path) -> runtime_adapters.LoadedModel:
        raise ModelLoadError("fake adapter loads nothing")

    def predict_size(self, spec: ModelSpec, local_path: Path) -> int:
        return 1

    async def status(self) -> RuntimeStatus:
        return RuntimeStatus(self.name, True, 0, 0)

    async def close(self) -> None:
        self.closed = True


async def test_given_adapters_are_used_and_closed() -> None:
    fake = _FakeAdapter()
    registry = AdapterRegistry(AdapterSettings(), [fake])
    assert registry.model_types == ("fake", "other")
    assert registry.for_type("FAKE") is fake
    with pytest.raises(UnsupportedModelType):
        registry.for_type("onnx")
    await registry.close()
    assert fake.closed


async def test_close_stops_the_pools(tmp_path: Path) -> None:
    from tests import model_factory as mf

    registry = build_registry(AdapterSettings())
    model = await registry.for_type("onnx").load(ModelSpec("m", "onnx"), mf.make_onnx_model(tmp_path))
    await registry.close()
    await registry.close()  # idempotent
    with pytest.raises(ModelLoadError, match="closed"):
        await registry.for_type("onnx").load(ModelSpec("m", "onnx"), tmp_path)
    await model.unload()  # still fine after close


def test_settings_env_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELMUX_ADAPTER_INFER_WORKERS", "3")
    monkeypatch.setenv("MODELMUX_ADAPTER_TORCH_DEVICE", "cuda:1")
    monkeypatch.setenv("MODELMUX_RUNTIME_CAPACITY_BYTES", "12345")
    s = AdapterSettings()
    assert (s.infer_workers, s.torch_device, s.onnx_intra_op_threads) == (3, "cuda:1", 1)
    assert RuntimeServerSettings().capacity_bytes == 12345
    with pytest.raises(ValueError):
        AdapterSettings(infer_workers=0)


def test_every_error_has_a_code_from_the_vocabulary() -> None:
    classes = [
        AdapterError,
        InvalidInput,
        RequestTooLarge,
        UnsupportedModelType,
        ModelLoadError,
        ModelNotLoaded,
        DeviceUnavailable,
        InferenceFailed,
    ]
    for cls in classes:
        assert issubclass(cls, AdapterError)
        assert cls.code in VOCABULARY
        assert cls("boom").message == "boom"
    assert ModelLoadError.code == "load_failed"
    assert (InvalidInput.code, ModelNotLoaded.code, DeviceUnavailable.code) == (
        "invalid_argument",
        "not_found",
        "failed_precondition",
    )


def test_public_api_is_exported() -> None:
    assert set(runtime_adapters.__all__) <= set(dir(runtime_adapters))
    for name in ("ModelSpec", "LoadedModel", "RuntimeAdapter", "AdapterRegistry", "build_registry", "raw_to_list",
                 "list_to_raw", "dtype_size", "DATATYPES", "RuntimeService", "start_runtime_server"):
        assert name in runtime_adapters.__all__


def test_package_imports_neither_mesh_nor_its_siblings() -> None:
    forbidden = {"mesh", "puller", "placement"}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
