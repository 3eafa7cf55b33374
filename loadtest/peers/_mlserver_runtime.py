"""MLServer custom runtime: one onnxruntime session. Runs INSIDE the mlserver peer venv.

Imported by MLServer through its import path `_mlserver_runtime.OnnxRuntimeModel` (the app puts this
folder on sys.path). `predict` gets one request or, with adaptive batching, MLServer's merged batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        params = self.settings.parameters
        extra: dict[str, Any] = dict(params.extra or {})
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(extra.get("intra_op_threads", 0))
        so.inter_op_num_threads = int(extra.get("inter_op_threads", 1))
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = ort.InferenceSession(params.uri, sess_options=so, providers=["CPUExecutionProvider"])
        self._input: str = extra["input"]
        self._output: str = extra["output"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # Inline on the event loop, as MLServer's own runtimes (sklearn, xgboost) call their models.
        data = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (out,) = self._session.run([self._output], {self._input: data})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(self._output, np.asarray(out, dtype=np.float32))],
        )
