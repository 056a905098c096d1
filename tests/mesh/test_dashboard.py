"""The dashboard end to end in headless Chromium (Debian's ``chromium``, driven by playwright):
it shows the instances and a model the test loaded, updates after an eviction, and stays
usable with 10,000 registered models (search, paging). Screenshots go to the test's tmp dir."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from mesh._store_schema import ModelRecord, encode
from tests.mesh.cluster import MemoryCluster, wait_until
from tests.mesh.models import add_model, request_bytes

INFER = "/inference.GRPCInferenceService/ModelInfer"
TABLE = 256 << 10
MODEL_BYTES = TABLE + (16 << 10)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(autouse=True)
def _one_copy_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # keep placement to one copy per model (no second copy for a model used a few times), so
    # which instance holds what follows from the requests alone
    monkeypatch.setenv("MODELMUX_PLACEMENT_SECOND_COPY_RPM", "1000000")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing (.ci/run installs it)")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def _infer(address: str, model: str) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        await ch.unary_unary(INFER)(request_bytes(model), timeout=30)


async def test_dashboard_shows_instances_models_and_an_eviction(
    browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two instances with room for one test model each, sized by its file (an RSS delta taken in
    # this shared process can double a small model, past either instance's room)
    monkeypatch.setenv("MODELMUX_ADAPTER_MEASURE_LOAD_RSS", "false")
    c = MemoryCluster(2, tmp_path, capacity_bytes=int(MODEL_BYTES * 1.6), overrides={"dashboard_sample_s": 0.25})
    await c.start()
    try:
        async with httpx.AsyncClient(base_url=c.rest[0]) as rest:
            for k, name in enumerate(("alpha", "beta", "gamma")):
                p = add_model(tmp_path / name / "model.onnx", float(k), table_bytes=TABLE)
                r = await rest.post(f"/api/v1/models/{name}", json={"modelInfo": {"type": "onnx", "path": str(p)}})
                assert r.status_code == 200, r.text
            await _infer(c.grpc[0], "alpha")

            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(f"{c.rest[0]}/dashboard/?interval_ms=250")
            # the instances, and the model this test loaded, where it is
            for iid in ("local-0", "local-1"):
                await page.locator(f'.instance[data-instance-id="{iid}"]').wait_for(timeout=15_000)
            [holder] = [i["instance_id"] for i in (await rest.get("/api/v1/cluster/overview")).json()["instances"] if i["models"]]
            await page.locator(f'.instance[data-instance-id="{holder}"] .chip[data-model-id="alpha"]').wait_for(timeout=15_000)
            await page.locator('#models tr[data-model-id="alpha"] td.state-LOADED').wait_for(timeout=15_000)
            await page.locator('#decisions tr[data-decision^="load:alpha:"]').wait_for(timeout=15_000)
            assert await page.locator("#c-instances").text_content() == "2"
            await page.screenshot(path=str(tmp_path / "dashboard-loaded.png"), full_page=True)

            # beta fits on the other instance; gamma then needs room: one of them is evicted
            await _infer(c.grpc[0], "beta")
            await _infer(c.grpc[0], "gamma")

            async def evicted() -> str | None:
                rows = {m["model_id"]: m["state"] for m in (await rest.get("/api/v1/cluster/models")).json()["models"]}
                gone = [m for m in ("alpha", "beta") if rows[m] == "NOT_LOADED"]
                return gone[0] if rows["gamma"] == "LOADED" and len(gone) == 1 else None

            victim = await wait_until(evicted, what="an eviction")
            # the page follows: the victim's chip leaves its instance, gamma's appears, the eviction is logged
            await page.locator(f'.instance .chip[data-model-id="{victim}"]').wait_for(state="detached", timeout=15_000)
            await page.locator('.instance .chip[data-model-id="gamma"]').wait_for(timeout=15_000)
            await page.locator(f'#decisions tr[data-decision^="unload:{victim}:"]').wait_for(timeout=15_000)
            await page.locator(f'#models tr[data-model-id="{victim}"] td.state-NOT_LOADED').wait_for(timeout=15_000)
            reason = await page.locator(f'#decisions tr[data-decision^="unload:{victim}:"] td.reason').first.text_content()
            assert reason and reason.startswith("evict")
            # the request-rate chart has been drawn from the sampled series
            await page.locator("#chart-rps polyline").wait_for(timeout=15_000)
            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
    finally:
        await c.close()


async def test_dashboard_pages_and_searches_10k_models(browser: Any, tmp_path: Path) -> None:
    c = MemoryCluster(1, tmp_path, capacity_bytes=64 << 20)
    await c.start()
    try:
        assert c.mesh is not None
        inst = c.mesh.instances[0]
        n = 10_000
        for k in range(n):  # registrations only (nothing loads): straight into the store
            rec = ModelRecord(model_id=f"model-{k:05d}", model_type="onnx", path=f"/nowhere/{k}.onnx", predicted_size_bytes=1 << 20)
            await c.store.put(inst.keys.model(rec.model_id), encode(rec))
        await wait_until(lambda: len(inst.state.models.items) == n, what="10k models mirrored")

        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await page.goto(f"{c.rest[0]}/dashboard/?interval_ms=500")
        await page.locator("#page-info", has_text=f"1-50 of {n}").wait_for(timeout=15_000)
        assert await page.locator("#models tbody tr").count() == 50
        assert await page.locator("#c-models").text_content() == str(n)
        await page.click("#next")
        await page.locator("#page-info", has_text=f"51-100 of {n}").wait_for(timeout=15_000)
        await page.locator('#models tr[data-model-id="model-00050"]').wait_for(timeout=15_000)
        await page.fill("#search", "model-0999")
        await page.locator("#page-info", has_text="1-10 of 10").wait_for(timeout=15_000)
        ids = await page.locator("#models tbody tr").evaluate_all("rows => rows.map(r => r.dataset.modelId)")
        assert ids == [f"model-0999{d}" for d in range(10)]
        # state filter buttons carry the counts
        await page.locator('#state-filters button[data-state="NOT_LOADED"]', has_text=str(n)).wait_for(timeout=15_000)
        await page.screenshot(path=str(tmp_path / "dashboard-10k.png"), full_page=True)
    finally:
        await c.close()
