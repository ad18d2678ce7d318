"""Shared parts of the lang3d pipelines: CLI, CLIP wrapper, sparse backbone, losses, TensorBoard helpers."""
