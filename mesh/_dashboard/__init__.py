"""What an operator sees: read-only views of the cluster, a request-rate ring, the dashboard page.

Every instance serves them (any instance can answer: they read only the instance's mirrors
of the store, never the store itself, and never anything on the request path):

* :class:`ClusterOverview` (``_overview``) - models (searchable, paged), vModels, instances with their copies,
  one model described (copies, assignment, history, last failure), the placement decision
  log (``decisions/`` keys, written by the leader with each change).
* :class:`TrafficSeries` (``_series``) - a small ring of samples of the cluster's request rate and hit
  ratio, computed from the cumulative counters each instance publishes in its record.
* :func:`install` (``_routes``) - the JSON routes and the static page (``/dashboard``, plain HTML/JS/CSS
  from ``static/``, no build step) on an instance's REST app.

The terminal renderings of the same views live with the CLI (``mesh.cli._render``).
"""

from __future__ import annotations

from ._overview import ClusterOverview
from ._routes import install
from ._series import Sample, TrafficSeries

__all__ = ["ClusterOverview", "Sample", "TrafficSeries", "install"]
