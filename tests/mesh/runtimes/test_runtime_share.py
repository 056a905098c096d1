"""Workers get read-only copies of artifacts they could not read (ShareDir), and are started on
demand: none until a load of an isolated type needs one."""

from __future__ import annotations

import os
import pwd
import stat
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh._runtimes import RuntimeSettings, RuntimeSupervisor
from mesh._runtimes._share import ShareDir
from protos import grpc_predict_v2_pb2 as pb
from runtime_adapters import ModelSpec
from tests.mesh.runtimes.rthelp import HOSTILE_WORKER, bytes_output, fp32_request, readable_dir

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="workers run as another user only when the instance is root")


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[bytes]:
    pw = pwd.getpwnam("nobody")
    return subprocess.run(argv, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], capture_output=True, timeout=30, check=False)


def _private_artifact(tmp_path: Path) -> tuple[Path, Path]:
    """A 0700 folder (like pytest's tmp dirs and the data dir) with a model folder and a secret beside it."""
    private = tmp_path / "private"
    model = private / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.pt").write_bytes(b"weights" * 100)
    (model / "sub" / "extra.bin").write_bytes(b"extra")
    (model / "schema.json").write_text('{"inputs": [], "outputs": []}')
    secret = private / "storage-config.json"
    secret.write_text("SECRET-KEY")
    os.chmod(secret, 0o600)
    os.symlink(secret, model / "link-out")  # a hostile link: must not be followed by the copy
    os.symlink("model.pt", model / "link-in")
    os.mkfifo(model / "fifo")  # opening it to copy would block: skipped
    os.chmod(private, 0o700)
    return private, model


def test_share_copies_a_folder_read_only_and_leaves_the_original_alone(tmp_path: Path) -> None:
    private, model = _private_artifact(tmp_path)
    before = {p: os.lstat(p).st_mode for p in [private, *private.rglob("*")]}
    share = ShareDir(str(tmp_path))
    try:
        got = share.add(ModelSpec("m", "pytorch"), model)
        assert share.root is not None and got.parent == share.root
        assert stat.S_IMODE(os.stat(share.root).st_mode) == 0o711  # passable, not listable
        assert len(got.name) == 32  # an unguessable folder per load
        assert (got / "model.pt").read_bytes() == b"weights" * 100
        assert (got / "sub" / "extra.bin").read_bytes() == b"extra"
        for p in (got / "model.pt", got / "sub" / "extra.bin", got / "schema.json"):
            assert stat.S_IMODE(os.lstat(p).st_mode) == 0o444
        for p in (got, got / "sub"):
            assert stat.S_IMODE(os.lstat(p).st_mode) == 0o555
        # links re-created as they are (root never read through them), special files skipped
        assert os.readlink(got / "link-out") == str(private / "storage-config.json")
        assert os.readlink(got / "link-in") == "model.pt"
        assert not (got / "fifo").exists()
        assert b"SECRET-KEY" not in b"".join(p.read_bytes() for p in got.rglob("*") if p.is_file() and not p.is_symlink())
        # nothing about the original changed
        assert {p: os.lstat(p).st_mode for p in [private, *private.rglob("*")]} == before
        share.remove(got / "model.pt")
        assert not got.exists() and share.root.exists()
    finally:
        share.close()
    assert share.root is None and list(tmp_path.glob("mm-share-*")) == []


def test_share_copies_a_model_file_with_its_schema_only(tmp_path: Path) -> None:
    _private, model = _private_artifact(tmp_path)
    (model / "my-schema.json").write_text("{}")
    share = ShareDir(str(tmp_path))
    try:
        got = share.add(ModelSpec("m", "pytorch", schema_path="my-schema.json"), model / "model.pt")
        assert got.name == "model.pt"
        assert sorted(p.name for p in got.parent.iterdir()) == ["model.pt", "my-schema.json", "schema.json"]
        hostile = share.add(ModelSpec("h", "pytorch", schema_path="../storage-config.json"), model / "model.pt")
        assert sorted(p.name for p in hostile.parent.iterdir()) == ["model.pt", "schema.json"]
    finally:
        share.close()


@ROOT_ONLY
def test_the_worker_user_reads_the_copy_and_not_the_original(tmp_path: Path) -> None:
    _private, model = _private_artifact(tmp_path)
    share = ShareDir()  # the system's temporary folder, as the instance uses it
    try:
        got = share.add(ModelSpec("m", "pytorch"), model)
        assert _as_nobody("cat", str(got / "model.pt")).stdout == b"weights" * 100
        assert _as_nobody("cat", str(model / "model.pt")).returncode != 0
        assert _as_nobody("cat", str(got / "link-out")).returncode != 0  # the link leads back to the private folder
        assert _as_nobody("ls", str(share.root)).returncode != 0  # other loads' folders are not listed
        assert _as_nobody("touch", str(got / "new")).returncode != 0  # read-only
    finally:
        share.close()


@pytest.fixture
async def lazy() -> AsyncIterator[RuntimeSupervisor]:
    sup = RuntimeSupervisor(RuntimeSettings(count=2, worker_module=HOSTILE_WORKER, isolated_types=("hostile",)))
    await sup.start()
    try:
        yield sup
    finally:
        await sup.close()


async def test_workers_start_on_demand_one_per_busy_worker(lazy: RuntimeSupervisor, tmp_path: Path) -> None:
    sup = lazy
    assert sup.handles("hostile") and not sup.handles("onnx")
    assert [r.pid for r in sup.runtimes] == [None, None]  # started, yet no process
    with readable_dir() as d:
        a = await sup.load(ModelSpec("a", "hostile"), d)
        assert a.runtime_name == "rt0" and sup.runtimes[1].pid is None
        b = await sup.load(ModelSpec("b", "hostile"), d)  # rt0 holds a copy: the next worker, for this load
        assert b.runtime_name == "rt1" and sup.runtimes[1].pid is not None
        c = await sup.load(ModelSpec("c", "hostile"), d)  # both busy, none left to start: the emptier one
        assert c.runtime_name in {"rt0", "rt1"}
        req = pb.ModelInferRequest(model_name="b")
        req.inputs.add(name="INPUT0", datatype="FP32", shape=[2])
        req.raw_input_contents.append(struct.pack("<2f", 1.5, 2.5))
        raw = await b.infer_bytes(req.SerializeToString(), 10.0)  # echoed by the new worker
        assert pb.ModelInferResponse.FromString(raw).raw_output_contents[0] == struct.pack("<2f", 1.5, 2.5)
        assert [d["started"] for d in sup.describe()] == [True, True]


@ROOT_ONLY
async def test_an_artifact_in_a_private_folder_is_loaded_from_a_copy_removed_on_unload(
    lazy: RuntimeSupervisor, tmp_path: Path
) -> None:
    sup = lazy
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "secret"
    secret.write_text("SECRET-KEY")
    os.chmod(secret, 0o600)
    model = private / "model"
    model.mkdir()
    (model / "weights").write_text("w")
    copy = await sup.load(ModelSpec("r", "hostile", options={"action": "read", "path": str(model / "weights")}), model)
    assert copy.share is not None and sup._share.root is not None and copy.share.parent == sup._share.root
    # the worker cannot read the instance's folder ...
    out = bytes_output(await copy.infer_bytes(fp32_request("r", "INPUT0", [1.0]), 10.0))
    assert out.startswith(b"ERR PermissionError")
    # ... and reads the copy it was given
    reader = await sup.load(ModelSpec("r2", "hostile", options={"action": "read", "path": str(copy.share / "weights")}), model)
    assert bytes_output(await reader.infer_bytes(fp32_request("r2", "INPUT0", [1.0]), 10.0)) == b"w"
    shared = copy.share
    await copy.unload()
    await _settled(sup)
    assert not shared.exists() and reader.share is not None and reader.share.exists()  # only its own copy went
    await sup.close()
    assert not reader.share.exists() and not sup._share.root
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700 and secret.read_text() == "SECRET-KEY"


async def _settled(sup: RuntimeSupervisor) -> None:
    for task in list(sup._share_tasks):
        await task
