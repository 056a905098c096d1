"""Settings of the Kubernetes controller (``MODELMUX_CONTROLLER_*``). Inert; built once by the entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DEFAULT_TYPES = ["onnx", "pytorch", "torchscript", "torch_export", "xgboost"]


class ControllerSettings(BaseSettings):
    """How the controller reaches the API server and how it maps objects to registrations.

    ``namespace`` empty watches every namespace. ``vmodel_names``: ``name`` gives the vModel
    the object's name (ModelMesh-compatible, clients send ``mm-vmodel-id: <name>``);
    ``namespace.name`` prefixes the namespace, for one mesh serving namespaces whose object
    names may collide. ``model_types`` are the formats of the built-in runtime
    (``builtin_runtime``); ServingRuntime objects add more per namespace.
    """

    model_config = SettingsConfigDict(env_prefix="MODELMUX_CONTROLLER_", extra="ignore")

    # API server
    kube_host: str = ""  # e.g. https://10.0.0.1:6443; "" = in-cluster config, else kubeconfig
    kubeconfig_path: Path | None = None
    kube_verify_tls: bool = True
    kube_token: str = ""  # bearer token when kube_host is given (in-cluster config reads its own)
    namespace: str = ""
    watch_predictors: bool = True
    watch_inference_services: bool = True
    watch_serving_runtimes: bool = True
    watch_cluster_serving_runtimes: bool = True
    watch_tenant_quotas: bool = True
    quota_status_interval_s: float = Field(default=2.0, ge=0)  # least time between usage refreshes of a TenantQuota status
    watch_timeout_s: int = Field(default=300, ge=1)  # server-side bound of one watch request
    request_timeout_s: float = Field(default=30.0, gt=0)  # bound of every other API call
    api_threads: int = Field(default=8, ge=1)  # threads running blocking API calls

    # mapping
    vmodel_names: Literal["name", "namespace.name"] = "name"
    builtin_runtime: str = "modelmux"
    model_types: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(_DEFAULT_TYPES))
    load_now: bool = True  # load a new or changed model right away (modelmesh-serving does)
    service_name: str = "modelmux"  # the Service in status endpoints
    service_namespace: str = ""  # "" = the object's namespace
    grpc_port: int = 8033
    rest_port: int = 8008
    # which storage keys each namespace may name (controller._storage_access): the name of a
    # ConfigMap in storage_access_namespace ("" = the controller's own: lease_namespace, POD_NAMESPACE,
    # default). "" = off: any key (one mesh per namespace). Set and missing: no key at all.
    storage_access_configmap: str = ""
    storage_access_namespace: str = ""

    # loop
    workers: int = Field(default=8, ge=1)  # objects reconciled concurrently
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=60.0, gt=0)
    events: bool = True  # emit Kubernetes Events on load failures and transitions
    instance_id: str = ""  # who asks for loads in the store (default: controller-<host>)
    # leader election among controller replicas (a coordination.k8s.io/v1 Lease)
    leader_election: bool = True
    lease_name: str = "modelmux-controller"
    lease_namespace: str = ""  # "" = POD_NAMESPACE, else "default"
    lease_duration_s: float = Field(default=15.0, gt=0)
    renew_deadline_s: float = Field(default=10.0, gt=0)
    retry_period_s: float = Field(default=2.0, gt=0)
    identity: str = ""  # "" = POD_NAME, else hostname-pid
    health_port: int = 8081  # /healthz and /readyz; -1 = off, 0 = any free port
    health_host: str = "0.0.0.0"
    # as a client of an instance's management API (``modelmux apply``; docs/security.md): the
    # controller is a principal of role admin. The reconcile loop itself writes through the store.
    token_file: Path | None = None  # its bearer token
    tls_ca_file: Path | None = None  # CA checked against the instances' certificates
    tls_cert_file: Path | None = None  # its client certificate (instances with --tls-client-ca ask for one)
    tls_key_file: Path | None = None

    def mesh_client_options(self) -> dict[str, Any]:
        """``headers`` and ``verify`` for an httpx client to the instances' REST API."""
        import ssl

        headers: dict[str, str] = {}
        if self.token_file is not None:
            headers["authorization"] = f"Bearer {self.token_file.read_text(encoding='utf-8').strip()}"
        verify: Any = True
        if self.tls_ca_file is not None or self.tls_cert_file is not None:
            ctx = ssl.create_default_context(cafile=str(self.tls_ca_file) if self.tls_ca_file else None)
            if self.tls_cert_file is not None:
                ctx.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file) if self.tls_key_file else None)
            verify = ctx
        return {"headers": headers, "verify": verify}

    @field_validator("model_types", mode="before")
    @classmethod
    def _split_types(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip().lower() for t in value.split(",") if t.strip()]
        return value
