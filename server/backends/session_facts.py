"""What an onnxruntime instance tells of itself, wherever its session lives (in this process,
onnxruntime_backend.OrtBackend, or in the session host, hosted_backend.HostedBackend)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from server.models.onnx_completion import OnnxTensor


class SessionFacts:
    """The name, tensors, providers and executor of an instance, read-only (copies)."""

    _name: str
    _inputs: list[OnnxTensor]
    _outputs: list[OnnxTensor]
    _active_providers: list[str]
    _executor: ThreadPoolExecutor

    @property
    def name(self) -> str:
        return self._name

    @property
    def inputs(self) -> list[OnnxTensor]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[OnnxTensor]:
        return list(self._outputs)

    @property
    def active_providers(self) -> list[str]:
        return list(self._active_providers)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """This instance's own threads (max_workers = batches in flight), for runs off the loop."""
        return self._executor
