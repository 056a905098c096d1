"""The private descriptor pool that holds modelmux's generated protobuf types.

tritonclient and the kserve SDK each register the V2 messages
(``inference.ModelInferRequest`` and friends) in protobuf's *default*
descriptor pool, under different file names. A third registration of the same
symbols there fails at import time ("duplicate symbol"). modelmux therefore
builds its messages in a pool of its own: the wire format is identical (it is
defined by field numbers, not by pools), and modelmux imports cleanly next to
either SDK. ``protos/generate.py`` rewrites the generated modules to use this pool.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
