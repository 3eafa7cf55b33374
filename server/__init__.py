"""Sluiceway's gRPC front: protocol, model repository, backends and the server factory."""
