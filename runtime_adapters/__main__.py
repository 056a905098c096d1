"""``python -m runtime_adapters [--address HOST:PORT]``: run these adapters as an external
runtime process (``mmesh.ModelRuntime`` + V2 inference on one gRPC port).

Settings come from the environment (``MODELMUX_ADAPTER_*``, ``MODELMUX_RUNTIME_*``). The
bound port is printed as ``listening on <port>`` once the server accepts calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from ._batching import BatchingSettings
from ._event_loop import run as run_event_loop
from ._frame_server import start_frame_server
from ._registry import build_registry
from ._runtime_server import RuntimeService, start_runtime_server
from ._settings import AdapterSettings, RuntimeServerSettings

log = logging.getLogger("runtime_adapters")


async def serve(address: str, frames: str = "") -> None:
    registry = build_registry(AdapterSettings())
    settings = RuntimeServerSettings()
    service = RuntimeService(registry, settings, batching=BatchingSettings())
    server, port = await start_runtime_server(service, address)
    frame_server = (
        await start_frame_server(service, frames, inline_below_s=settings.inline_infer_below_s) if frames else None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info("model runtime serving %s on port %d", ", ".join(registry.model_types), port)
    print(f"listening on {port}", flush=True)
    try:
        await stop.wait()
    finally:
        if frame_server is not None:
            frame_server.close()
        await server.stop(grace=5)
        await service.unload_all()
        await registry.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime_adapters", description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:8085", help="host:port to listen on (port 0 = any)")
    parser.add_argument("--frames", default="", help="also serve inference frames on this Unix socket path")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_event_loop(serve(args.address, args.frames))


if __name__ == "__main__":
    main()
