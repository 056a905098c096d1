"""Wire definitions: KServe V2 gRPC (``inference``), ModelMesh management and runtime APIs (``mmesh``).

Generated modules (``*_pb2.py``, ``*_pb2_grpc.py``) are committed; regenerate with
``python -m protos.generate``. They register in a private descriptor pool (see
``protos/_pool.py``) so modelmux imports next to tritonclient and the kserve SDK.
"""

__all__ = [
    "grpc_predict_v2_pb2",
    "grpc_predict_v2_pb2_grpc",
    "model_mesh_pb2",
    "model_mesh_pb2_grpc",
    "model_runtime_pb2",
    "model_runtime_pb2_grpc",
]
