#!/usr/bin/env bash
# Mutation testing with mutmut: the batcher (batcher/), the protocol's pure modules
# (server/protocol/codec.py, validate.py, controls.py, classification.py, sequence_params.py,
# side_streams.py, and system shared memory: shared_memory.py, shm_regions.py, shm_tensors.py),
# server/backends/run_errors.py and onnx_inspect.py, server/models/onnx_completion.py,
# config_bounds.py, load_retry.py, traffic.py and rollback.py, server/protocol/stream_order.py,
# frame_size.py and stream_bytes.py, server/models/share_files.py and rollout_snapshot.py,
# server/tensor_bounds.py and protos/wire.py, server/protocol/load_order.py, server/models/frame_rules.py,
# lazy_plans.py, ensemble_budget.py, first_run.py, rollout_replay.py, rollout_carry.py and
# ensemble_config.py, server/observability/sample_layout.py and sampling_writer.py,
# server/backends/int_division_guard.py, int_division_rewrite.py, int_division_nodes.py and
# int_division_scan.py, server/protocol/loop_pace.py and rpc_slots.py, server/backends/prepared_graph.py,
# onnx_data_sized.py, onnx_output_shapes.py, onnx_row_mixing.py, onnx_mixing_ops.py, onnx_mixing_probe.py,
# onnx_constant_fold.py, onnx_reshape_rows.py, onnx_batch_size_value.py, onnx_row_positions.py, onnx_row_offsets.py,
# onnx_batch_names.py, onnx_partial_ints.py, onnx_partial_arithmetic.py, node_order.py, onnx_size_slots.py, onnx_size_positions.py, onnx_grown_rows.py, onnx_pool_indices.py, onnx_einsum.py, onnx_broadcast_pairs.py,
# onnx_filled_shapes.py, onnx_seeded_shapes.py, onnx_table_reads.py, onnx_sequence_reads.py, onnx_rankless.py,
# onnx_branch_axes.py, onnx_constant_branches.py, onnx_reference_fold.py, onnx_fixed_lengths.py, onnx_dim_terms.py,
# onnx_runtime_rewrites.py, onnx_unplaced_reshapes.py,
# function_inlining.py,
# onnx_value_lineage.py, onnx_partial_dims.py, onnx_told_dims.py,
# server/observability/host_usage.py, gpu_usage.py and gpu_readings.py,
# onnx_foreign_ops.py, onnx_stand_ins.py, onnx_stand_ins_contrib.py, onnx_stand_in_maker.py,
# onnx_mixing_graph.py, onnx_dim_classes.py,
# server/models/dim_ties.py,
# row_quantization.py,
# row_quantization_nodes.py,
# graph_names.py and batch_axes.py, the session
# host's server/backends/hosted_session.py, segment_pool.py and host_wire.py, and the workers' shared
# memory: server/protocol/shm_book.py, booked_mappings.py, shm_workers.py and cuda_shm_workers.py,
# the GPU path's server/backends/pinned.py, cuda_shm.py, batch_padding.py, io_binding.py,
# instance_groups.py, tensorrt_options.py, provider_choice.py, gpu_devices.py, cudart.py, instances.py
# and onnxruntime_backend.py, the install's server/runtime_check.py and gpu_libraries.py, the GPU
# check's loadtest/gpu_plan.py, gpu_report.py, gpu_perf_analyzer.py, gpu_repository.py and
# gpu_check.py, the CPU's
# gather_buffers.py, server/periodic.py,
# the two ends of a shared session (server/backends/hosted_backend.py and session_host.py), and the
# handlers' answers (server/protocol/answers.py), against the unit tests (tests/unit; mutmut runs
# only the tests that reach the mutated function).
# Configuration: [tool.mutmut] in pyproject.toml. Work and results go to mutants/ (git-ignored).
#
#   bash scripts/mutation.sh                      # every mutant (20,053; 19,710 took 1.8 h here, 5 then 12 jobs: MUTANTS.md, 47th session)
#   bash scripts/mutation.sh 'batcher.form.*'     # only mutants whose names match (fnmatch globs)
#   MUTATION_KEEP=1 bash scripts/mutation.sh      # reuse mutants/ (results of unchanged code stand)
#   MUTATION_SUMMARY_ONLY=1 bash scripts/mutation.sh   # print the score of the last run again
#
# Prints the score per module and in total (killed/total, a timeout counting as killed) and every
# mutant not killed with its diff. Equivalent mutants, and why, are listed in tests/MUTANTS.md.
# Environment: MUTATION_TIMEOUT (seconds for the whole run, default 10800), MUTATION_JOBS (parallel
# mutants, default: the core count), MUTATION_NICE (default 15). Exits 1 when the run did not finish.
set -euo pipefail
cd "$(dirname "$0")/.."

MUTMUT_VERSION=3.8.1  # 3.x: config in [tool.mutmut], copies the project into mutants/
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
if [ "$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("mutmut"))' 2>/dev/null)" \
  != "$MUTMUT_VERSION" ]; then
  .venv/bin/python -m pip install -q "mutmut==$MUTMUT_VERSION"
fi

status=0
if [ "${MUTATION_SUMMARY_ONLY:-0}" != 1 ]; then
  if [ "${MUTATION_KEEP:-0}" != 1 ]; then
    rm -rf mutants
  fi
  mkdir -p mutants
  jobs="${MUTATION_JOBS:-$(nproc)}"
  echo "mutmut $MUTMUT_VERSION: running (log: mutants/run.log) ..."
  start=$(date +%s)
  # mutmut draws a progress spinner: keep it in the log, print its last lines on failure.
  if ! timeout --kill-after=30 "${MUTATION_TIMEOUT:-10800}" nice -n "${MUTATION_NICE:-15}" \
    .venv/bin/mutmut run --max-children "$jobs" "$@" >mutants/run.log 2>&1; then
    status=1
    echo "mutmut run failed or timed out (after $(($(date +%s) - start)) s); last output:"
    tail -c 2000 mutants/run.log | tr '\r' '\n' | tail -n 15
  else
    echo "done in $(($(date +%s) - start)) s"
  fi
fi

# The summary reads mutmut's own result files (mutants/**/*.py.meta) and diffs.
.venv/bin/python - "$@" <<'PY'
import ast
import fnmatch
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code

globs = sys.argv[1:]
DETECTED = {"killed", "timeout", "caught by type check"}
by_module: dict[str, Counter[str]] = defaultdict(Counter)
not_killed: list[tuple[str, str, Path]] = []
for meta in sorted(Path("mutants").rglob("*.py.meta")):
    source = meta.relative_to("mutants").with_suffix("")
    module = str(source.with_suffix("")).replace("/", ".")
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if globs and not any(fnmatch.fnmatch(name, g) for g in globs):
            continue
        status = status_by_exit_code[code]
        by_module[module][status] += 1
        if status not in DETECTED and status != "not checked":  # not checked: the run stopped
            not_killed.append((name, status, source))

if not by_module:
    sys.exit("no mutmut results under mutants/: run without MUTATION_SUMMARY_ONLY first")


def score(c: Counter[str]) -> str:
    killed, total = sum(c[s] for s in DETECTED), sum(c.values())
    others = ", ".join(f"{n} {s}" for s, n in sorted(c.items()) if s not in DETECTED)
    return f"{killed}/{total} ({100 * killed / total:.1f}%)" + (f"  [{others}]" if others else "")


def source_line(name: str, source: Path, removed: str, offset: int) -> int | None:
    """Line in `source` of the mutated line: mutant names are module.x_func or module.xǁClassǁmethod."""
    key = re.sub(r"__mutmut_\d+$", "", name.rpartition(".x")[2])
    parts = key.split("ǁ")[1:] if key.startswith("ǁ") else [key[1:]]
    nodes: list[ast.AST] = [ast.parse(source.read_text())]
    for part in parts:
        found = [
            n for parent in nodes for n in ast.iter_child_nodes(parent)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part
        ]
        if not found:
            return None
        nodes = found
    fn = nodes[0]
    start = min([fn.lineno] + [d.lineno for d in getattr(fn, "decorator_list", [])])
    lines = source.read_text().splitlines()
    hits = [i + 1 for i in range(start - 1, fn.end_lineno or start) if lines[i].strip() == removed.strip()]
    return min(hits, key=lambda n: abs(n - (start + offset)), default=None)


print("\nMutation score (killed/total; timeouts count as killed):")
for module, c in sorted(by_module.items()):
    print(f"  {module:32} {score(c)}")
print(f"  {'TOTAL':32} {score(sum(by_module.values(), Counter()))}")
if not_killed:
    print(f"\nNot killed ({len(not_killed)}; equivalent ones are listed in tests/MUTANTS.md):")
for name, status, source in not_killed:
    diff = get_diff_for_mutant(name, path=source).splitlines()
    changed = [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    hunk = next((int(m.group(1)) for line in diff if (m := re.match(r"@@ -(\d+)", line))), 1)
    removed = next((line[1:] for line in diff if line[:1] == "-" and line[:3] != "---"), "")
    skip = next((i for i, line in enumerate(diff) if line[:1] == "-" and line[:3] != "---"), 0)
    context = sum(1 for line in diff[:skip] if line[:1] == " ")
    line_no = source_line(name, source, removed, hunk - 1 + context)
    print(f"\n# {source}:{line_no or '?'}  {name}: {status}")
    print("\n".join(changed))
PY
exit "$status"
