"""Workstation tool: export a training checkpoint to a streaming ONNX model (``python -m export``
or ``edge-detect export``). Never imported by the runtime."""
