"""Kubernetes integration: the controller (``modelmux controller``) and ``modelmux apply -f``.

- :func:`run_controller` watches Predictor (``serving.kserve.io/v1alpha1``) and
  InferenceService (``serving.kserve.io/v1beta1``, ModelMesh deployment mode) objects,
  registers them in the mesh and writes their status back (``_controller``).
- :func:`apply_files` registers the same YAML against a running mesh's REST API, without a
  cluster (``_apply``).
- The mapping and status logic is pure (``_reconcile``) and shared by both.
"""

from ._apply import ApplyResult, apply_files, load_documents
from ._client import Informer, KubeApiError, KubeClient, build_api_client
from ._controller import Controller, ElectedController, merge_patch, run_controller
from ._election import LEASE, LeaderElector
from ._queue import WorkQueue
from ._reconcile import (
    FINALIZER,
    INFERENCE_SERVICE,
    PREDICTOR,
    SERVING_RUNTIME,
    CRStatus,
    EventSpec,
    FailureInfo,
    Kind,
    ObjectRef,
    ReconcileContext,
    Registration,
    Rejection,
    Runtime,
    compute_status,
    desired_state,
    events_between,
    model_id_for,
    spec_hash,
    status_from_json,
    status_json,
)
from ._settings import ControllerSettings

__all__ = [
    "FINALIZER",
    "INFERENCE_SERVICE",
    "LEASE",
    "PREDICTOR",
    "SERVING_RUNTIME",
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
    "ObjectRef",
    "ReconcileContext",
    "Registration",
    "Rejection",
    "Runtime",
    "WorkQueue",
    "apply_files",
    "build_api_client",
    "compute_status",
    "desired_state",
    "events_between",
    "load_documents",
    "merge_patch",
    "model_id_for",
    "run_controller",
    "spec_hash",
    "status_from_json",
    "status_json",
]
