"""Regenerate docs/dashboard.png and docs/top.png: a local mesh with demo models under skewed
traffic, the dashboard in headless Chromium, and ``modelmux top --once`` rendered by rich (SVG)
and photographed by the same browser. Needs Debian's chromium and the test extra (playwright).

    python docs/make_screenshots.py
"""

from __future__ import annotations

import asyncio
import io
import sys
import tempfile
from pathlib import Path

import httpx
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mesh import LocalMesh, LocalMeshConfig, _demo  # noqa: E402
from mesh.cli import _render  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def main(tmp: Path) -> None:
    from playwright.async_api import async_playwright

    mesh = LocalMesh(LocalMeshConfig(instances=3, capacity_bytes=12 << 20, data_dir=tmp, allowed_roots=[tmp],
                                     instance_overrides={"dashboard_sample_s": 1.0, "publish_interval_s": 0.5}))
    await mesh.start()
    try:
        models = await asyncio.to_thread(_demo.make_demo_models, tmp / "demo-models", 120)
        await _demo.register_models(mesh, models)
        rest = f"http://{mesh.instances[0].endpoints.rest}"  # type: ignore[union-attr]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1440, "height": 1180})
            await page.goto(f"{rest}/dashboard/?interval_ms=1000")
            traffic = asyncio.create_task(
                _demo.drive_traffic([i.endpoints.grpc for i in mesh.instances], models, duration_s=45.0)  # type: ignore[union-attr]
            )
            await asyncio.sleep(40.0)  # pictures taken while the traffic runs (a picture, not a test)
            await page.screenshot(path=str(ROOT / "docs" / "dashboard.png"))
            async with httpx.AsyncClient(base_url=rest) as c:
                o = (await c.get("/api/v1/cluster/overview")).json()
            await traffic
            console = Console(record=True, width=150, file=io.StringIO())
            console.print(_render.top(o, limit=8))
            shot = await browser.new_page(viewport={"width": 1300, "height": 900})
            await shot.set_content(f"<html><body style='margin:0'>{console.export_svg(title='modelmux top')}</body></html>")
            await shot.locator("svg").screenshot(path=str(ROOT / "docs" / "top.png"))
            await browser.close()
    finally:
        await mesh.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(Path(d)))
