"""``modelmux get`` output the way kubectl prints it: with stdout not a terminal (a pipe), plain
aligned columns under CAPS headers with every id in full at any terminal width; ``-o wide`` adds
columns; ``-o json|yaml`` are the API's rows; in a terminal, a rich table that folds long ids
onto more lines instead of cutting them."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from mesh.cli import app
from tests.mesh.cluster import ROOT, MemoryCluster, wait_until
from tests.mesh.models import add_model

TABLE = 64 << 10
LONG = 80
TENANT = "tenant-" + "t" * 53  # 60 characters


def long_id(prefix: str) -> str:
    return (prefix + "-" + "abcdefghij" * 9)[:LONG]


MODELS = [long_id(f"model{k}") for k in range(3)]
VMODEL = long_id("vmodel")


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """One instance, three models with 80-character ids (the first loaded, in a tenant with a
    quota), a vModel with an 80-character name. A copy's size is the framework's own bytes, not an
    RSS delta of this shared process, so every column but the ids has the same width on every run
    (a first ONNX Runtime session once measured 10 MiB or more, one column wider than 80 allows)."""
    monkeypatch.setenv("MODELMUX_ADAPTER_MEASURE_LOAD_RSS", "false")
    c = MemoryCluster(1, tmp_path, capacity_bytes=64 << 20)
    await c.start()
    try:
        async with httpx.AsyncClient(base_url=c.rest[0], timeout=30) as rest:
            for k, mid in enumerate(MODELS):
                path = add_model(tmp_path / f"m{k}" / "model.onnx", float(k), table_bytes=TABLE)
                key = json.dumps({"tenant": TENANT}) if k == 0 else ""
                body = {"modelInfo": {"type": "onnx", "path": str(path), "key": key}, "loadNow": k == 0}
                assert (await rest.post(f"/api/v1/models/{mid}", json=body)).status_code == 200
            assert (await rest.put(f"/api/v1/vmodels/{VMODEL}", json={"targetModelId": MODELS[0]})).status_code == 200
            assert (await rest.put(f"/api/v1/tenants/{TENANT}", json={"maxBytes": "32Mi"})).status_code == 200

            async def loaded() -> bool:
                rows = (await rest.get("/api/v1/cluster/models", params={"limit": 10})).json()["models"]
                return any(r["model_id"] == MODELS[0] and r["state"] == "LOADED" for r in rows)

            await wait_until(loaded, 30, "the first model loaded")

            async def counted() -> bool:  # the instance record follows its loads within INSTANCE_COALESCE_S
                return [r["models"] for r in (await rest.get("/api/v1/instances")).json()["instances"]] == [1]

            await wait_until(counted, 30, "the instance record counting the loaded model")
        yield c
    finally:
        await c.close()


async def run_cli(*args: str, code: int = 0) -> str:
    """The command through typer's runner: its stdout is not a terminal, as in a pipe."""
    res = await asyncio.to_thread(CliRunner().invoke, app, list(args), env={"COLUMNS": "80"})
    assert res.exit_code == code, (args, res.exit_code, res.output, res.exception)
    return res.stdout


def columns_of(header: str) -> list[tuple[int, str]]:
    """(start, name) of each column of a plain header (names may hold one space: LAST USED)."""
    return [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", header)]


def parse_plain(text: str) -> list[dict[str, str]]:
    """Rows of a plain table, asserting its layout: CAPS header, no box drawing or ellipsis, each
    cell one token starting exactly under its header."""
    assert not set(text) & set("│┃━─┏┡└…"), text
    header, *lines = text.rstrip("\n").split("\n")
    cols = columns_of(header)
    assert header == header.upper() and cols[0][0] == 0
    rows = []
    for line in lines:
        tokens = line.split()
        assert len(tokens) == len(cols), (line, cols)
        for (start, _), token in zip(cols, tokens, strict=True):
            assert line[start:].startswith(token) and (start == 0 or line[start - 1] == " "), (line, start, token)
        rows.append({name: token for (_, name), token in zip(cols, tokens, strict=True)})
    return rows


async def test_piped_get_models_prints_plain_aligned_columns_with_full_ids(cluster: MemoryCluster) -> None:
    addr = cluster.rest[0]
    # a real pipe, at 80 columns: the rows are wider than the terminal, nothing is cut or wrapped
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mesh", "get", "models", "-a", addr], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    rows = parse_plain(proc.stdout)
    assert max(len(line) for line in proc.stdout.splitlines()) > 80
    assert [c for _, c in columns_of(proc.stdout.splitlines()[0])] == [
        "MODEL", "TYPE", "STATE", "LOADED", "LOADING", "FAILED", "SIZE", "REQ/MIN", "LAST USED", "WHERE"
    ]
    by_id = {r["MODEL"]: r for r in rows}
    assert list(by_id) == MODELS  # sorted by id, each in full
    assert by_id[MODELS[0]]["STATE"] == "LOADED" and by_id[MODELS[0]]["WHERE"] == "local-0" and by_id[MODELS[0]]["LOADED"] == "1"
    assert by_id[MODELS[1]]["STATE"] == "NOT_LOADED" and by_id[MODELS[1]]["WHERE"] == "-"
    assert by_id[MODELS[0]]["SIZE"].endswith("KiB") and by_id[MODELS[1]]["TYPE"] == "onnx"

    # -o plain is the same table; -o wide adds the tenant and the assigned instances
    assert parse_plain(await run_cli("get", "models", "-a", addr, "-o", "plain")) == rows
    wide = parse_plain(await run_cli("get", "models", "-a", addr, "-o", "wide"))
    assert [{k: v for k, v in r.items() if k not in ("TENANT", "ASSIGNED")} for r in wide] == rows
    assert {r["MODEL"]: r["TENANT"] for r in wide} == {MODELS[0]: TENANT, MODELS[1]: "-", MODELS[2]: "-"}
    assert {r["MODEL"]: r["ASSIGNED"] for r in wide}[MODELS[0]] == "local-0"

    # json and yaml: the API's rows, as before
    async with httpx.AsyncClient(base_url=addr) as rest:
        api = (await rest.get("/api/v1/cluster/models", params={"limit": 500})).json()["models"]
    as_json = json.loads(await run_cli("get", "models", "-a", addr, "-o", "json"))
    assert as_json == api
    assert yaml.safe_load(await run_cli("get", "models", "-a", addr, "-o", "yaml")) == as_json

    # nothing to list: kubectl's "No ... found." on stderr, stdout empty
    res = await asyncio.to_thread(CliRunner().invoke, app, ["get", "models", "-a", addr, "-q", "no-such"])
    assert res.exit_code == 0 and res.stdout == "" and "No models found." in res.stderr
    bad = await asyncio.to_thread(CliRunner().invoke, app, ["get", "models", "-a", addr, "-o", "xml"])
    assert bad.exit_code != 0


async def test_piped_get_instances_vmodels_tenants(cluster: MemoryCluster) -> None:
    addr = cluster.rest[0]
    [inst] = parse_plain(await run_cli("get", "instances", "-a", addr))
    assert inst["INSTANCE"] == "local-0" and inst["ROLE"] == "leader" and inst["STATUS"] == "serving" and inst["MODELS"] == "1"
    assert "MEMORY" not in inst  # the bar is for terminals only
    [inst_wide] = parse_plain(await run_cli("get", "instances", "-a", addr, "-o", "wide"))
    assert inst_wide["REST ADDRESS"] == addr.removeprefix("http://") and {"ZONE", "VERSION", "STARTED"} <= set(inst_wide)

    [vm] = parse_plain(await run_cli("get", "vmodels", "-a", addr))
    assert vm == {"VMODEL": VMODEL, "STATUS": "DEFINED", "ACTIVE MODEL": MODELS[0], "TARGET MODEL": MODELS[0],
                  "ACTIVE STATE": "LOADED", "OWNER": "-"}
    [vm_wide] = parse_plain(await run_cli("get", "vmodels", "-a", addr, "-o", "wide"))
    assert vm_wide == {**vm, "FAILURE": "-"}
    [vm_json] = json.loads(await run_cli("get", "vmodels", "-a", addr, "-o", "json"))
    assert vm_json["name"] == VMODEL and vm_json["active_model_id"] == MODELS[0]

    tenants = {r["TENANT"]: r for r in parse_plain(await run_cli("tenant", "list", "-a", addr))}
    assert tenants[TENANT]["QUOTA"] == "32.0MiB" and tenants[TENANT]["MODELS"] == "1" and tenants[TENANT]["SOURCE"] == "api"
    [one] = parse_plain(await run_cli("tenant", "get", TENANT, "-a", addr, "-o", "wide"))
    assert one["TENANT"] == TENANT and one["UPDATED"] != "-"
    assert json.loads(await run_cli("tenant", "get", TENANT, "-a", addr, "-o", "json"))["max_bytes"] == 32 << 20


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args: list[str], columns: int) -> str:
    """Run ``modelmux`` with stdout on a pseudo-terminal ``columns`` wide; its output, escapes removed."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(ROOT), "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "mesh", *args], stdout=slave, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")


async def test_terminal_table_folds_long_ids_instead_of_cutting_them(cluster: MemoryCluster) -> None:
    # 80 columns: too narrow for a boxed table; a lighter one keeps the short columns whole and
    # folds the ids over lines, never cutting one
    out = await asyncio.to_thread(run_in_terminal, ["get", "models", "-a", cluster.rest[0]], 80)
    lines = out.splitlines()
    assert "…" not in out and all(len(line) <= 80 for line in lines), out
    header = next(line for line in lines if line.startswith("MODEL"))
    assert header.split() == ["MODEL", "TYPE", "STATE", "LOADED", "LOADING", "FAILED", "SIZE", "REQ/MIN", "LAST", "USED", "WHERE"]
    width = header.index("TYPE") - 1
    body = lines[lines.index(header) + 2 :]  # under the header's rule
    assert "".join(line[:width].strip() for line in body) == "".join(MODELS), out  # each id whole, folded over lines
    assert [line.split()[1:3] for line in body if line[width + 1 :].strip()] == [["onnx", "LOADED"], ["onnx", "NOT_LOADED"], ["onnx", "NOT_LOADED"]]
    assert "local-0" in out

    # wide enough: the boxed table, one line per model
    out = await asyncio.to_thread(run_in_terminal, ["get", "models", "-a", cluster.rest[0]], 200)
    assert "┃ MODEL" in out and "…" not in out, out
    assert all(any(line.startswith(f"│ {mid} ") for line in out.splitlines()) for mid in MODELS), out


def _model_row(state: str, size_bytes: int, rpm: float) -> dict[str, Any]:
    return {
        "model_id": "m" * LONG, "type": "onnx", "state": state, "copies": {"loaded": 1, "loading": 0, "failed": 0},
        "size_bytes": size_bytes, "rpm": rpm, "last_used": 0.0, "where": ["local-0"], "tenant": "",
    }  # fmt: skip


@pytest.mark.parametrize("size_bytes,rpm,stacked", [(123 << 10, 0.0, True), (12 << 20, 1 / 60, False)])
def test_a_narrow_terminal_stacks_two_word_headers_before_it_folds_a_short_cell(size_bytes: int, rpm: float, stacked: bool) -> None:
    # an 8-character size, or a rate of 1/60 written 0.0166667, made the short columns too wide for
    # 80: every column folded and NOT_LOADED was cut over two lines. Now a stacked "LAST USED"
    # spares the size, and a rate has at most three significant digits
    from rich.console import Console

    from mesh.cli._output import rich_table, shown
    from mesh.cli._render import MODEL_COLUMNS

    console = Console(width=80, record=True, color_system=None)
    console.print(rich_table(shown(MODEL_COLUMNS, wide=False), [_model_row("LOADED", size_bytes, rpm), _model_row("NOT_LOADED", 0, rpm)]))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    at = next(k for k, line in enumerate(lines) if line.startswith("MODEL"))
    if stacked:
        assert lines[at - 1].split() == ["LAST"] and lines[at].split()[-2:] == ["USED", "WHERE"]
    else:
        assert lines[at].split()[-3:] == ["LAST", "USED", "WHERE"]
    states = [line.split()[2] for line in lines[at + 2 :] if len(line.split()) > 2]
    assert states == ["LOADED", "NOT_LOADED"], lines
    assert "0.0166667" not in console.export_text() and ("0.0167" in "\n".join(lines)) == (rpm > 0)
