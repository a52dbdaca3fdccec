#!/usr/bin/env bash
# mvsim on a GPU, in one command:   benchmarks/gpu.sh [--quick] [--part bench|k-scaling|dask|all] [OUT.json]
#
# Part bench runs, into one JSON (default benchmarks/results-gpu.json): the step's
# efficiency, seed batching at S = 1..256 (cache-resident and memory-bound sizes), time to
# verdict of `mvsim verify` at k = 10 and k = 20, a short sweep (verify at mu = 0.02 and
# 0.1), and the demo verify again at the other matmul precision, saying whether any
# verdict changed.
#
# Part k-scaling runs `mvsim experiment k-scaling` on the demo family at k = 10, 20, 40,
# 70, 100 (all claims, the default seeds per k) into OUT's folder/k-scaling (report.json,
# figures, report.html, store.sqlite; rerunning resumes from the store). Sized for about
# 10 minutes on one H100/H200 from the CPU's measured growth (time per model ∝ k^2.3, see
# docs/k-scaling.md): an estimate, not yet run on a GPU. --quick: the tiny family
# at k = 2, 3 with single and ensemble only, a minute on a CPU (tests/test_k_scaling.py).
# Part learners runs `mvsim experiment learners` at the demo's data with the ViT's students
# at the full kd_T (vit_kd_T = 20000: on 2 CPU cores its stiff flow costs hours per
# student, docs/learners.md) into OUT's folder/learners; not timed on a GPU yet, so it is
# not in all. --quick: the tiny preset with seconds-sized budgets.
# Part dask runs the same k-scaling list to k = 100 (10, 20, 40, 70, 100) as tasks of a Dask
# LocalCluster with one worker per GPU (each sees its own alone, CUDA_VISIBLE_DEVICES), into
# OUT's folder/k-scaling-dask; the log gives each point's worker, time and compile time, and
# the store the same numbers the single-process part stores (docs/sweeps.md). With one GPU
# it is the k-scaling part with the scheduler's overhead; with several, the points spread
# over them. Not timed on a GPU yet, so it is not in all. --quick: tiny at k = 2, 3 on 2
# CPU workers.
# Default part: all (bench, then k-scaling).
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
part=all
next_is_part=""
for arg in "$@"; do
  if [ -n "$next_is_part" ]; then part="$arg"; next_is_part=""; continue; fi
  case "$arg" in
    --quick) quick="--quick" ;;
    --part) next_is_part=1 ;;
    -h | --help) sed -n '2,39p' "$0"; exit 0 ;;
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

case "$part" in
  bench | k-scaling | learners | dask | all) ;;
  *) echo "gpu.sh: --part must be bench, k-scaling, learners, dask or all, not $part" >&2; exit 2 ;;
esac

# k_scaling DIR [FLAGS...]: the k-scaling list into $(dirname $out)/DIR with FLAGS
# (the Dask block's --executor dask); --quick: k = 2, 3 on tiny.
k_scaling() {
  local dir
  dir="$(dirname "$out")/$1"
  shift
  if [ -n "$quick" ]; then
    "$PY" -m mvsim.cli experiment k-scaling --family tiny --ks 2,3 --claims single,ensemble \
      --seeds 2 --set T=300 --set exp_n_test_multi=400 --set exp_n_test_single=400 \
      --no-progress "$@" --out "$dir"
  else
    "$PY" -m mvsim.cli experiment k-scaling --family demo --ks 10,20,40,70,100 "$@" --out "$dir"
  fi
}

learners() {
  local dir
  dir="$(dirname "$out")/learners"
  if [ -n "$quick" ]; then
    "$PY" -m mvsim.cli experiment learners --preset tiny --seeds 2 --set kd_students=1 \
      --set avg_seeds=1 --set avg_members=2 --set T=100 --set kd_T=20 --set vit_dim=8 \
      --set mlp_width=8 --set exp_n_test_multi=200 --set exp_n_test_single=400 \
      --no-progress --out "$dir"
  else
    "$PY" -m mvsim.cli experiment learners --preset demo --seeds 4 --set kd_students=1 \
      --set avg_seeds=1 --set vit_kd_T=20000 --out "$dir" --store "$dir/store.sqlite"
  fi
}

if [ "$part" = learners ]; then
  learners
  exit 0
fi

if [ "$part" = k-scaling ]; then
  k_scaling k-scaling
  exit 0
fi

if [ "$part" = dask ]; then
  k_scaling k-scaling-dask --executor dask ${quick:+--workers 2}
  exit 0
fi

"$PY" -m benchmarks.run $quick \
  --only efficiency,batching,verify,precision,sweep \
  --seeds 1,4,16,64,256 \
  --verify-k 10,20 \
  --sweep "mu=0.02" --sweep "mu=0.1" \
  --precision "$JAX_DEFAULT_MATMUL_PRECISION" \
  --compare-precision "$other" \
  --budget-s "${MVSIM_BENCH_BUDGET_S:-540}" \
  --out "$out"

if [ "$part" = all ]; then
  k_scaling k-scaling
fi
