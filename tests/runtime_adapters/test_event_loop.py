"""The event loop a modelmux process runs on (MODELMUX_EVENT_LOOP): uvloop by default where it
is installed, asyncio's own on request or without it, a clear refusal of anything else."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import uvloop
from typer.testing import CliRunner

from runtime_adapters import EventLoopChoiceError, run_event_loop
from runtime_adapters._event_loop import DEFAULT_SWITCH_INTERVAL_S, loop_factory


async def _loop_class() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_default_is_uvloop_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELMUX_EVENT_LOOP", raising=False)
    assert loop_factory() is uvloop.new_event_loop
    assert run_event_loop(_loop_class()).startswith("uvloop")


@pytest.mark.parametrize("value", ["asyncio", " AsyncIO "])
def test_asyncio_on_request(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MODELMUX_EVENT_LOOP", value)
    assert loop_factory() is None
    assert run_event_loop(_loop_class()).startswith("asyncio")


def test_without_uvloop_auto_falls_back_and_a_demand_for_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert loop_factory("auto") is None
    assert run_event_loop(_loop_class(), loop="auto").startswith("asyncio")
    with pytest.raises(EventLoopChoiceError, match="not installed"):
        loop_factory("uvloop")


def test_an_unknown_loop_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[bool] = []

    async def main() -> None:
        ran.append(True)

    monkeypatch.setenv("MODELMUX_EVENT_LOOP", "tokio")
    with pytest.raises(EventLoopChoiceError, match="auto, uvloop, asyncio"):
        run_event_loop(main())
    assert ran == []


def test_the_cli_refuses_an_unknown_loop_with_exit_2(tmp_path: Path) -> None:
    from mesh.cli import app

    argv = ["serve", "--grpc-port", "0", "--rest-port", "-1", "--store", "memory", "--data-dir", str(tmp_path)]
    res = CliRunner().invoke(app, argv, env={"MODELMUX_EVENT_LOOP": "tokio", "COLUMNS": "200"})
    assert res.exit_code == 2, res.output
    assert "MODELMUX_EVENT_LOOP" in res.output and "tokio" in res.output


async def _switch_interval() -> float:
    await asyncio.sleep(0)
    return sys.getswitchinterval()


def test_the_loop_runs_with_the_gil_switch_interval_asked_for_and_puts_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    before = sys.getswitchinterval()
    monkeypatch.delenv("MODELMUX_GIL_SWITCH_INTERVAL_S", raising=False)
    assert run_event_loop(_switch_interval()) == pytest.approx(DEFAULT_SWITCH_INTERVAL_S)
    assert sys.getswitchinterval() == before
    monkeypatch.setenv("MODELMUX_GIL_SWITCH_INTERVAL_S", "0.002")
    assert run_event_loop(_switch_interval()) == pytest.approx(0.002)
    assert sys.getswitchinterval() == before

    async def fails() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_event_loop(fails())
    assert sys.getswitchinterval() == before  # put back when the main coroutine fails too


@pytest.mark.parametrize("value", ["0", "-1", "fast", "nan", "inf", "2"])
def test_a_bad_switch_interval_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    ran: list[bool] = []

    async def main() -> None:
        ran.append(True)

    before = sys.getswitchinterval()
    monkeypatch.setenv("MODELMUX_GIL_SWITCH_INTERVAL_S", value)
    with pytest.raises(EventLoopChoiceError, match="MODELMUX_GIL_SWITCH_INTERVAL_S"):
        run_event_loop(main())
    assert ran == []
    assert sys.getswitchinterval() == before
