"""The dashboard with an auth file, in headless Chromium: it asks for a token in the page, keeps
it in sessionStorage and sends it as a header (never in a URL), and shows the tenant its own
models only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.mesh.cluster import MemoryCluster
from tests.mesh.models import add_model
from tests.mesh.test_dashboard import browser  # noqa: F401 - the fixture
from tests.security.tenancy_help import TOKENS, write_auth_file


async def test_dashboard_token_in_the_page_and_a_tenants_view(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    auth = write_auth_file(tmp_path / "auth.yaml")
    cluster = MemoryCluster(1, tmp_path, capacity_bytes=64 << 20, overrides={"auth_file": auth})
    await cluster.start()
    try:
        base = cluster.rest[0]
        for token, model, c in ((TOKENS["a"], "a-model", 1.0), (TOKENS["b"], "b-model", 2.0)):
            path = add_model(tmp_path / model / "model.onnx", c)
            async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=60) as http:
                r = await http.post(f"{base}/api/v1/models/{model}", json={"modelInfo": {"type": "onnx", "path": str(path)}})
                assert r.status_code == 200, r.text
        page = await browser.new_page()
        urls: list[str] = []
        sent: list[str | None] = []

        def seen(req: Any) -> None:
            urls.append(req.url)
            if "/v1/" in req.url:
                sent.append(req.headers.get("authorization"))

        page.on("request", seen)
        await page.goto(f"{base}/dashboard/")
        await page.locator("#auth").wait_for(state="visible", timeout=15_000)  # 401: the page asks
        await page.fill("#auth-token", TOKENS["a"])
        await page.click("#auth-form button")
        await page.locator('#models tr[data-model-id="a-model"]').wait_for(timeout=15_000)
        assert await page.locator('#models tr[data-model-id="b-model"]').count() == 0
        assert await page.evaluate("sessionStorage.getItem('modelmux.token')") == TOKENS["a"]
        assert f"Bearer {TOKENS['a']}" in sent
        assert not any(TOKENS["a"] in u for u in urls), "the token went into a URL"
        assert TOKENS["a"] not in page.url
        await page.close()
    finally:
        await cluster.close()
