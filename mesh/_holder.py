"""Which instance served a request: the ``mm-holder`` answer metadata behind direct routing.

The router records, for the request being served, the gRPC address of the instance whose copy
answered it (its own advertised address for a local hit, the holder's for a forward) in a
context variable; the gRPC edge sends it back as the trailing metadata ``mm-holder``. A client
(:class:`mesh.client.DirectRouter`) can then send the next requests for that model straight
to the holder, skipping the forward. Addresses are the ones instances advertise to each other
(``MODELMUX_INSTANCE_ADVERTISE_HOST``): reachable where peers are reachable.
"""

from __future__ import annotations

from contextvars import ContextVar

HOLDER_HEADER = "mm-holder"

# set by the router in the task serving a request (each gRPC call runs in its own task)
served_by: ContextVar[str] = ContextVar("mm_served_by", default="")


def holder_trailer() -> tuple[tuple[str, str], ...] | None:
    """The trailing metadata naming the holder of the request just served, or None if unknown."""
    addr = served_by.get()
    return ((HOLDER_HEADER, addr),) if addr else None
