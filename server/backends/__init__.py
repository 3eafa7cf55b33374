"""Model backends: each implements batcher.types.Backend for one model instance."""
