"""The Kubernetes controller (``modelmux controller``, ``python -m controller``) and ``modelmux apply -f``.

A package of its own on top of :mod:`mesh`: it imports only ``mesh``'s public names, and
``mesh`` never imports it (the ``modelmux`` CLI finds its commands through the
``modelmux.cli`` entry-point group).

- :func:`run_controller` watches Predictor (``serving.kserve.io/v1alpha1``),
  InferenceService (``serving.kserve.io/v1beta1``, ModelMesh deployment mode) and TenantQuota
  objects, registers them in the mesh and writes their status back; ServingRuntime /
  ClusterServingRuntime objects say which runtime serves each model, a storage-access
  ConfigMap which storage keys each namespace may name.
- :func:`apply_files` registers the same YAML against a running mesh's REST API, without a
  cluster.

Modules, by job:

- ``_kinds``: the kinds, object references and the names derived from them (vModel id,
  owner, model id) both ways.
- ``_mapping``: object -> desired registration (pure).
- ``_runtimes``: ServingRuntime / ClusterServingRuntime objects -> runtimes, and which one
  serves a model (pure).
- ``_storage_access``: which storage keys each namespace may name, from a ConfigMap (pure).
- ``_status``: the mesh's view of a vModel -> the object's ``.status`` (pure).
- ``_events``: which Kubernetes Events a status change emits, and the Event object.
- ``_tenants``: TenantQuota objects -> tenant quotas, and their status (pure).
- ``_controller``: the reconcile loop (informers and store watches -> work queue -> mesh).
- ``_runner``: leader election around the loop, health probes, the process entry point.
- ``_kube_client``, ``_work_queue``, ``_election``: the Kubernetes API seam, the
  rate-limited queue, the Lease.
- ``_apply``: ``modelmux apply -f``; ``_cli``: the CLI commands; ``_settings``: settings.
"""

from ._apply import ApplyResult, apply_files, load_documents
from ._cli import register_commands
from ._controller import Controller
from ._election import LEASE, LeaderElector
from ._events import EventSpec, event_object, events_between
from ._kinds import (
    CLUSTER_SERVING_RUNTIME,
    FINALIZER,
    INFERENCE_SERVICE,
    PREDICTOR,
    SERVING_RUNTIME,
    STORAGE_KEY_NOT_ALLOWED,
    Kind,
    ObjectRef,
    model_id_for,
    ref_for_vmodel,
    vmodel_of_model,
)
from ._kube_client import Informer, KubeApiError, KubeClient, build_api_client, merge_patch
from ._mapping import ReconcileContext, Registration, Rejection, desired_state, spec_hash
from ._runner import ElectedController, run_controller, serve_health
from ._runtimes import ModelFormat, Runtime, RuntimeCatalog, RuntimeChoice, runtime_from_object
from ._settings import ControllerSettings
from ._status import CRStatus, FailureInfo, compute_status, status_from_json, status_json
from ._storage_access import StorageAccess, storage_access_from_configmap
from ._work_queue import WorkQueue

__all__ = [
    "CLUSTER_SERVING_RUNTIME",
    "FINALIZER",
    "INFERENCE_SERVICE",
    "LEASE",
    "PREDICTOR",
    "SERVING_RUNTIME",
    "STORAGE_KEY_NOT_ALLOWED",
    "ApplyResult",
    "CRStatus",
    "Controller",
    "ControllerSettings",
    "ElectedController",
    "EventSpec",
    "FailureInfo",
    "Informer",
    "Kind",
    "KubeApiError",
    "KubeClient",
    "LeaderElector",
    "ModelFormat",
    "ObjectRef",
    "ReconcileContext",
    "Registration",
    "Rejection",
    "Runtime",
    "RuntimeCatalog",
    "RuntimeChoice",
    "StorageAccess",
    "WorkQueue",
    "apply_files",
    "build_api_client",
    "compute_status",
    "desired_state",
    "event_object",
    "events_between",
    "load_documents",
    "merge_patch",
    "model_id_for",
    "ref_for_vmodel",
    "register_commands",
    "run_controller",
    "runtime_from_object",
    "serve_health",
    "spec_hash",
    "status_from_json",
    "status_json",
    "storage_access_from_configmap",
    "vmodel_of_model",
]
