"""Isolation of runtime processes: hostile model code gets no secrets (real worker processes)."""

from __future__ import annotations

import os
import pwd
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh._runtimes import RuntimeSettings, RuntimeSupervisor
from runtime_adapters import AdapterSettings, ModelSpec, TorchAdapter
from tests import model_factory as mf
from tests.mesh.runtimes import hostile_models
from tests.mesh.runtimes.rthelp import (
    HOSTILE_WORKER,
    bytes_output,
    fp32_request,
    open_up,
    readable_dir,
)

SECRET = "TOPSECRET-8f2c1e"

def make_file_reader(out_dir: Path, target: Path, n: int) -> Path:
    """The hostile model of ``hostile_models``, readable by the worker's unprivileged user."""
    return open_up(hostile_models.make_file_reader(out_dir, target, n))


@pytest.fixture
async def hostile_env(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RuntimeSupervisor, Path, Path]]:
    monkeypatch.setenv("MODELMUX_STORE_PASSWORD", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with readable_dir() as d:
        secret = d / "storage-config.json"
        secret.write_text(f'{{"default": {{"secret_access_key": "{SECRET}"}}}}')
        os.chmod(secret, 0o600)
        sup = RuntimeSupervisor(
            RuntimeSettings(
                count=1, worker_module=HOSTILE_WORKER, isolated_types=("pytorch", "hostile"), start_workers="at_start"
            )
        )
        await sup.start()
        try:
            yield sup, d, secret
        finally:
            await sup.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged user is used only when the instance is root")
async def test_worker_runs_unprivileged_with_a_scrubbed_environment(hostile_env: tuple[RuntimeSupervisor, Path, Path]) -> None:
    sup, _d, _secret = hostile_env
    rt = sup.runtimes[0]
    assert rt.pid is not None
    status = Path(f"/proc/{rt.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    nobody = pwd.getpwnam("nobody").pw_uid
    assert uid_line.split()[1:] == [str(nobody)] * 4
    environ = Path(f"/proc/{rt.pid}/environ").read_bytes()
    assert SECRET.encode() not in environ
    names = {kv.split(b"=", 1)[0] for kv in environ.split(b"\0") if kv}
    assert not any(n.startswith((b"AWS_", b"MODELMUX_STORE")) for n in names)
    assert os.environ["MODELMUX_STORE_PASSWORD"] == SECRET  # the instance itself is unchanged


def _hide_setpriv(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without util-linux's setpriv."""
    import shutil

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "setpriv" else which(name, *a, **k))


@pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged user is used only when the instance is root")
@pytest.mark.parametrize(("loop", "setpriv"), [("uvloop", True), ("asyncio", True), ("asyncio", False)])
def test_worker_takes_the_runtime_users_ids_on_either_loop(loop: str, setpriv: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A serving process runs on uvloop by default, whose subprocess_exec cannot switch users:
    util-linux's setpriv does it (uid, gid, no supplementary groups) on any loop; without setpriv,
    asyncio's loop does it itself."""
    from runtime_adapters import run_event_loop

    if not setpriv:
        _hide_setpriv(monkeypatch)

    async def worker_status() -> str:
        sup = RuntimeSupervisor(RuntimeSettings(count=1, worker_module=HOSTILE_WORKER, isolated_types=("pytorch",), start_workers="at_start"))
        await sup.start()
        try:
            assert sup.runtimes[0].pid is not None
            return Path(f"/proc/{sup.runtimes[0].pid}/status").read_text()
        finally:
            await sup.close()

    status = {line.split(":")[0]: line.split()[1:] for line in run_event_loop(worker_status(), loop=loop).splitlines()}
    nobody = pwd.getpwnam("nobody")
    assert status["Uid"] == [str(nobody.pw_uid)] * 4
    assert status["Gid"] == [str(nobody.pw_gid)] * 4
    assert status["Groups"] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged user is used only when the instance is root")
def test_on_uvloop_without_setpriv_a_worker_refuses_to_start_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a worker that keeps root because the loop could not switch users: the start fails and says why."""
    import shutil

    from mesh._runtimes._process import WorkerProcess
    from runtime_adapters import run_event_loop

    _hide_setpriv(monkeypatch)
    worker = WorkerProcess("rt0", module=HOSTILE_WORKER, env={}, memory_limit_bytes=0, user="nobody", start_timeout_s=30)

    async def start() -> None:
        await worker.start()

    try:
        with pytest.raises(RuntimeError, match="install setpriv, or set MODELMUX_EVENT_LOOP=asyncio"):
            run_event_loop(start(), loop="uvloop")
        assert worker.proc is None  # nothing was started
    finally:
        shutil.rmtree(worker.dir, ignore_errors=True)


async def test_hostile_torchscript_cannot_read_the_secret_file(hostile_env: tuple[RuntimeSupervisor, Path, Path]) -> None:
    sup, d, secret = hostile_env
    model = make_file_reader(d / "reader", secret, 16)
    # the attack is real: in the instance's own process the model reads the secret
    adapter = TorchAdapter(AdapterSettings(warm_up_first_load=False))
    try:
        local = await adapter.load(ModelSpec("reader", "pytorch"), model.parent)
        from mesh._codec import infer_request_from_pb, parse_infer_request

        resp = await local.infer(infer_request_from_pb(parse_infer_request(fp32_request("reader", "x", [0.0], [1]))))
        leaked = bytes(np.frombuffer(resp.outputs[0].raw, dtype=np.float32).astype(np.uint8))
        assert leaked == secret.read_bytes()[:16]
        await local.unload()
    finally:
        await adapter.close()
    # through the isolated runtime it gets an error, and the runtime stays up
    copy = await sup.load(ModelSpec("reader", "pytorch"), model.parent)
    pid = sup.runtimes[0].pid
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await copy.infer_bytes(fp32_request("reader", "x", [0.0], [1]), 10.0)
    assert SECRET not in (err.value.details() or "")
    assert "Permission denied" in (err.value.details() or "") or "open" in (err.value.details() or "").lower()
    assert sup.runtimes[0].pid == pid and sup.runtimes[0].ready.is_set()


@pytest.mark.parametrize("target", ["secret", "/proc/1/environ", "/proc/self/environ"])
async def test_hostile_code_in_the_runtime_reads_nothing_secret(
    hostile_env: tuple[RuntimeSupervisor, Path, Path], target: str
) -> None:
    sup, d, secret = hostile_env
    path = str(secret) if target == "secret" else target
    copy = await sup.load(ModelSpec(f"read-{abs(hash(target))}", "hostile", options={"action": "read", "path": path}), d)
    out = bytes_output(await copy.infer_bytes(fp32_request(copy.spec.model_id, "INPUT0", [1.0]), 10.0))
    assert SECRET.encode() not in out
    if target != "/proc/self/environ":
        assert out.startswith(b"ERR PermissionError")
    else:
        assert b"PYTHONPATH" in out  # it did read its own environment: only the scrubbed one


async def test_isolated_torchscript_matches_in_process(hostile_env: tuple[RuntimeSupervisor, Path, Path]) -> None:
    sup, d, _secret = hostile_env
    path = open_up(mf.make_torchscript_model(d / "lin"))
    copy = await sup.load(ModelSpec("lin", "pytorch"), path.parent)
    assert copy.size_bytes > 0
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    raw = await copy.infer_bytes(fp32_request("lin", copy.metadata.inputs[0].name, x.ravel().tolist()), 10.0)
    from protos import grpc_predict_v2_pb2 as pb

    got = np.frombuffer(pb.ModelInferResponse.FromString(raw).raw_output_contents[0], dtype=np.float32).reshape(1, 3)
    want = mf.torch_reference(path, x)
    np.testing.assert_allclose(got, np.asarray(want).reshape(1, 3), rtol=1e-5)
    await copy.unload()
    assert sup.runtimes[0].copies == {}
