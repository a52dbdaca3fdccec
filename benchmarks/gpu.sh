#!/usr/bin/env bash
# mvsim on a GPU, in one command:   benchmarks/gpu.sh [--quick] [OUT.json]
#
# Runs, into one JSON (default benchmarks/results-gpu.json): the step's efficiency, seed
# batching at S = 1..256 (cache-resident and memory-bound sizes), time to verdict of
# `mvsim verify` at k = 10 and k = 20, a short sweep (verify at mu = 0.02 and 0.1), and the
# demo verify again at the other matmul precision, saying whether any verdict changed.
#
# Installs nothing: needs jax (with its CUDA plugin) and mvsim importable already, e.g.
# `pip install -e .` done beforehand. Budgeted for 10 minutes on one H100: work that would
# run past MVSIM_BENCH_BUDGET_S (default 540 s) is skipped and noted in the JSON.
#
# Matmul precision (the config field matmul_precision of every verify run, and JAX's default
# for the raw matmul benchmarks; stated in the JSON as machine.matmul_precision):
#   JAX_DEFAULT_MATMUL_PRECISION=highest        full float32 (default here)
#   JAX_DEFAULT_MATMUL_PRECISION=tensorfloat32  TF32 tensor cores; the other one is compared
#
# CPU check of this script (reduced sizes, tiny preset, a minute or two):
#   JAX_PLATFORMS=cpu benchmarks/gpu.sh --quick /tmp/gpu-quick.json
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."

quick=""
out=""
for arg in "$@"; do
  case "$arg" in
    --quick) quick="--quick" ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "gpu.sh: unknown option $arg" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done

PY="${PYTHON:-python}"
export JAX_DEFAULT_MATMUL_PRECISION="${JAX_DEFAULT_MATMUL_PRECISION:-highest}"
case "$JAX_DEFAULT_MATMUL_PRECISION" in
  tensorfloat32) other=highest ;;
  *) other=tensorfloat32 ;;
esac

if ! "$PY" -c "import jax, optax, mvsim" >/dev/null 2>&1; then
  echo "gpu.sh: jax, optax and mvsim must be importable by $PY (this script installs nothing)" >&2
  exit 1
fi
backend="$("$PY" -c 'import jax; print(jax.default_backend())')"
if [ "$backend" = cpu ] && [ -z "$quick" ]; then
  echo "gpu.sh: warning: JAX sees no GPU; the full run on a CPU takes far longer than 10 minutes" >&2
fi
out="${out:-benchmarks/results-gpu.json}"
echo "gpu.sh: backend $backend, matmul precision $JAX_DEFAULT_MATMUL_PRECISION (compared with $other), writing $out"

exec "$PY" -m benchmarks.run $quick \
  --only efficiency,batching,verify,precision,sweep \
  --seeds 1,4,16,64,256 \
  --verify-k 10,20 \
  --sweep "mu=0.02" --sweep "mu=0.1" \
  --precision "$JAX_DEFAULT_MATMUL_PRECISION" \
  --compare-precision "$other" \
  --budget-s "${MVSIM_BENCH_BUDGET_S:-540}" \
  --out "$out"
