"""A local mesh: N instances sharing one store, in one process (the embedded default)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from placement import PolicySettings, build_policy
from puller import PullerSettings
from runtime_adapters import AdapterSettings

from ._instance import Instance, assemble_instance
from ._runtimes import RuntimeSettings
from ._settings import InstanceSettings
from ._store import Store, StoreSettings, build_store
from ._store_schema import Keys


@dataclass
class LocalMeshConfig:
    instances: int = 2
    capacity_bytes: int = 256 << 20
    data_dir: Path = Path("var/modelmux")
    host: str = "127.0.0.1"
    grpc_ports: Sequence[int] = ()  # empty: free ports
    rest_ports: Sequence[int] = ()
    store: StoreSettings = field(default_factory=StoreSettings)
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    puller_cache_bytes: int = 4 << 30
    allowed_roots: Sequence[Path] = ()
    instance_overrides: dict[str, object] = field(default_factory=dict)
    runtimes: RuntimeSettings | None = None  # None: MODELMUX_RUNTIMES_* (model code in worker processes)
    # instance ids are "<id_prefix>-<i>": local meshes in several processes sharing one store
    # (etcd) need different prefixes
    id_prefix: str = "local"


def _roots(c: LocalMeshConfig) -> list[Path]:
    return [Path(os.path.abspath(r)) for r in c.allowed_roots] or [Path(os.path.abspath(c.data_dir))]


class LocalMesh:
    def __init__(self, config: LocalMeshConfig, store: Store | None = None) -> None:
        self.config = config
        self._own_store = store is None
        self.store = store or build_store(config.store)
        self.keys = Keys(config.store.prefix)
        self.instances: list[Instance] = []

    async def start(self) -> list[Instance]:
        c = self.config
        for i in range(c.instances):
            data_dir = c.data_dir / f"instance-{i}"
            settings = InstanceSettings(
                instance_id=f"{c.id_prefix}-{i}",
                host=c.host,
                grpc_port=c.grpc_ports[i] if i < len(c.grpc_ports) else 0,
                rest_port=c.rest_ports[i] if i < len(c.rest_ports) else 0,
                capacity_bytes=c.capacity_bytes,
                data_dir=data_dir,
                **c.instance_overrides,  # type: ignore[arg-type]
            )
            inst = await assemble_instance(
                settings,
                self.store,
                puller_settings=PullerSettings(
                    cache_dir=data_dir / "cache", cache_budget_bytes=c.puller_cache_bytes, allowed_roots=_roots(c)
                ),
                adapter_settings=c.adapter,
                runtime_settings=c.runtimes,
                keys=self.keys,
                policy=build_policy(c.policy),
            )
            self.instances.append(inst)
            await inst.start()
        return self.instances

    async def stop(self) -> None:
        await asyncio.gather(*(i.stop(graceful=False) for i in self.instances), return_exceptions=True)
        if self._own_store:
            await self.store.close()
