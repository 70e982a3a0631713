#!/usr/bin/env bash
# One packed GPU run: random-weight Ministral 3 3B and 8B (make-model --like) at BF16, Q8_0 and Q4_K_M on the
# CUDA llama.cpp build, llama-bench (pp512, tg128) and a served sweep at 1, 4 and 16 streams through our
# benchmark, each against the memory-bandwidth roofline at the GPU's measured copy bandwidth and at its
# datasheet figure. Writes $OUT/gpu_run.json, $OUT/gpu_run.png and $OUT/gpu_run.log, within 8 minutes.
#
# For a GPU lent through the device tool (one H100 or H200, 16 cores, no network, 10 minutes a command):
#   1. here:  .venv/bin/python benchmarks/build_cuda.py --arch 90   (once; hours on 2 cores)
#             bash benchmarks/gpu/pack.sh                            (benchmarks/gpu/dist/, git-ignored)
#   2. device run:  command  bash benchmarks/gpu_run.sh --out "$OUT"
#                   carry    ["benchmarks/gpu/dist"]      timeout_s 600
#   3. here:  copy gpu_run.json and gpu_run.png from the reply's files_at into benchmarks/results/, named after
#             the GPU (e.g. gpu_run_h100.json).
#
# Dry run of every step on this machine's CPU build (tiny-random, a short sweep, a FAKE bandwidth figure):
#   bash benchmarks/gpu_run.sh --dry-run --out /tmp/gpu-dry      (tests/test_gpu_run.py runs it)
# Rehearsal of the GPU path itself (unpacking, wheels, library lookup, nvidia-smi) at the dry run's sizes, with a
# FAKE bandwidth: --rehearse (tests/test_gpu_run.py runs it with a stand-in pack and nvidia-smi).
#
# Env: PY (python with the packages; default python3), LLAMACPP_BIN (dry run: a CPU build's bin folder),
#      BUDGET_S (wall seconds for everything; default 450 on a GPU), WORK (scratch; default a new temp folder),
#      GPU_DIST (the packed folder; default benchmarks/gpu/dist), KEEP_WORK=1 (keep the scratch folder).
# The dry run stands in an H100's nvidia-smi line, marked FAKE, so the datasheet columns are computed too.
#
# The models are made while the GPU measures the ones already made: make-model writes each size at BF16 (the
# slow part, Python on the CPU), and Q8_0 and Q4_K_M are quantized from that file by llama-quantize, which is
# what make-model does for K-quants (from F16) and takes seconds on 16 cores. A model that is not ready in time
# is reported as skipped; the JSON and PNG are written whatever happened before.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/benchmarks/gpu"
DIST="${GPU_DIST:-$HERE/dist}"
DRY=0
REHEARSE=0
OUT_DIR="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --rehearse) REHEARSE=1 ;;
    --out) OUT_DIR=$2; shift ;;
    *) echo "usage: $0 [--dry-run | --rehearse] --out DIR" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$OUT_DIR" ] || { echo "gpu-run: error: --out DIR (or \$OUT) is needed" >&2; exit 2; }
mkdir -p "$OUT_DIR"
PY="${PY:-python3}"

MODE=gpu
[ "$REHEARSE" = 0 ] || MODE=rehearsal
[ "$DRY" = 0 ] || MODE=dry-run
if [ "$MODE" != gpu ]; then
  BUDGET_S="${BUDGET_S:-300}"
  SIZES=(tiny-random)
  LEVELS="1,4"
  REQUESTS=4
  POINT_S=3
  REPS=1
  CTX=2048
  PARALLEL=4
  MIN_LEFT=10
  NEED_GB=1
else
  BUDGET_S="${BUDGET_S:-450}"
  SIZES=(ministral-3b ministral-8b)
  LEVELS="1,4,16"
  REQUESTS=""  # bounded by time: POINT_S seconds a level after its warm-up
  POINT_S=6
  REPS=3
  CTX=16384
  PARALLEL=16
  MIN_LEFT=40  # a model's llama-bench and sweep take 20-40 s on an H100
  NEED_GB=45  # 8B at three precisions (30 GB) while the 3B files may still be there
fi
QUANTS=(BF16 Q8_0 Q4_K_M)
DEADLINE=$((SECONDS + BUDGET_S))
THREADS=$(nproc 2>/dev/null || echo 4)

# Scratch on the first of these with room for the models (the device's disk is 64 GB, its OS and torch included).
free_gb() { df -Pk "$1" 2>/dev/null | awk 'NR == 2 {print int($4 / 1048576)}'; }
if [ -z "${WORK:-}" ]; then
  for d in "${TMPDIR:-/tmp}" /dev/shm "$HOME"; do
    if [ -d "$d" ] && [ -w "$d" ] && [ "$(free_gb "$d")" -ge "$NEED_GB" ]; then
      WORK=$(mktemp -d "$d/gpu-run.XXXXXX")
      break
    fi
  done
  [ -n "${WORK:-}" ] || { echo "gpu-run: error: no folder with $NEED_GB GB free for the models" >&2; exit 2; }
fi
M="$WORK/models"
LOGS="$WORK/logs"
mkdir -p "$M" "$LOGS" "$WORK/home" "$WORK/cache" "$WORK/runs"
LOG="$OUT_DIR/gpu_run.log"
: >"$LOG"

say() { echo "gpu-run: [$SECONDS s] $*" | tee -a "$LOG"; }
die() {
  say "error: $1"
  exit "${2:-1}"
}
left() { echo $((DEADLINE - SECONDS)); }
say "scratch $WORK ($(free_gb "$WORK") GB free), budget $BUDGET_S s"

# Background jobs (model makers, a server) end with the script, whichever way it ends.
JOBS=()
cleanup() {
  local pid
  for pid in "${JOBS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

# ---- tools ---------------------------------------------------------------------------------------------------
setup_gpu() {
  local archive="$DIST/llama.cpp-cuda-sm90.tar.xz"
  [ -f "$archive" ] || die "no $archive: run bash benchmarks/gpu/pack.sh here and carry benchmarks/gpu/dist" 2
  if command -v xz >/dev/null 2>&1; then tar -xJf "$archive" -C "$WORK"; else "$PY" -m tarfile -e "$archive" "$WORK"; fi
  BIN="$WORK/llama.cpp"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$DIST"/wheels/*.whl \
    >>"$LOG" 2>&1 || die "installing the carried wheels failed (see the log)"
  export PYTHONPATH="$ROOT/lib:$WORK/site"
  # cuBLAS and the CUDA runtime come from the CUDA wheels beside torch (the archive carries neither: 600 MB).
  local dirs
  dirs=$("$PY" "$HERE/gpu_bench.py" cuda-libs)
  export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local missing
  missing=$(ldd "$BIN/llama-server" | grep "not found" || true)
  [ -z "$missing" ] || die "llama-server cannot find: $missing (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1 >"$WORK/gpu.csv"
  say "GPU: $(cat "$WORK/gpu.csv")"
}

setup_dry() {
  BIN="${LLAMACPP_BIN:-$HOME/.cache/mistral-lab/llama.cpp/0.3.36-cpu-native/bin}"
  export PYTHONPATH="$ROOT/lib${PYTHONPATH:+:$PYTHONPATH}"
  echo "NVIDIA H100 80GB HBM3 (FAKE: dry run without a GPU), 81559 MiB, none" >"$WORK/gpu.csv"
  say "dry run: CPU build $BIN, tiny-random, FAKE bandwidth and GPU"
}

if [ "$MODE" = dry-run ]; then setup_dry; else setup_gpu; fi
for t in llama-server llama-bench llama-quantize; do
  [ -x "$BIN/$t" ] || die "no $BIN/$t" 2
done
export PATH="$BIN:$PATH"  # make-model finds llama-quantize on PATH
export MISTRAL_LAB_HOME="$WORK/home" MISTRAL_LAB_CACHE="$WORK/cache" MPLBACKEND=Agg
"$PY" -c "import mistral_lab.cli, mistral_lab.modelgen, mistral_lab.bench, gguf" >>"$LOG" 2>&1 \
  || die "the Python packages are incomplete (see the log): rebuild the wheels with benchmarks/gpu/pack.sh" 2

ml() { "$PY" -c 'import sys; from mistral_lab.cli import main; main(sys.argv[1:])' "$@"; }
bench_py() { "$PY" "$HERE/gpu_bench.py" "$@"; }

# ---- bandwidth -----------------------------------------------------------------------------------------------
if [ "$MODE" != gpu ]; then
  bench_py bandwidth "$WORK/bandwidth.json" --fake 10 | tee -a "$LOG"
else
  bench_py bandwidth "$WORK/bandwidth.json" | tee -a "$LOG"
fi

# ---- models, made in the background --------------------------------------------------------------------------
# Each file appears under its final name only when complete; a .made file holds the seconds it took and a
# .failed file says it will not come.
make_size() {
  local like=$1 t0=$SECONDS q t
  if ml make-model --like "$like" --quant BF16 --out "$M/$like-BF16.gguf" >"$LOGS/make-$like.log" 2>&1; then
    echo $((SECONDS - t0)) >"$M/$like-BF16.made"
  else
    for q in "${QUANTS[@]}"; do touch "$M/$like-$q.failed"; done
    return
  fi
  for q in "${QUANTS[@]}"; do
    [ "$q" = BF16 ] && continue
    t=$SECONDS
    if llama-quantize "$M/$like-BF16.gguf" "$M/.$like-$q.part" "$q" "$THREADS" >>"$LOGS/make-$like.log" 2>&1; then
      mv "$M/.$like-$q.part" "$M/$like-$q.gguf"
      echo $((SECONDS - t)) >"$M/$like-$q.made"
    else
      touch "$M/$like-$q.failed"
    fi
  done
}

for like in "${SIZES[@]}"; do
  make_size "$like" &
  JOBS+=($!)
done

# ---- measuring -----------------------------------------------------------------------------------------------
wait_made() {  # name -> 0 when ready, 1 when failed or out of time
  local name=$1
  while [ ! -f "$M/$name.made" ]; do
    [ -f "$M/$name.failed" ] && return 1
    [ "$(left)" -gt "$MIN_LEFT" ] || return 1
    sleep 1
  done
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_health() {  # port pid -> 0 when the server answers /health
  local port=$1 pid=$2 until=$((SECONDS + 180))
  while [ $SECONDS -lt $until ]; do
    kill -0 "$pid" 2>/dev/null || return 1
    "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
      "http://127.0.0.1:$port/health" 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}

measure() {  # like quant
  local like=$1 q=$2 name="$1-$2" f="$M/$1-$2.gguf" made_by
  made_by="make-model --like $like --quant BF16"
  [ "$q" = BF16 ] || made_by="llama-quantize $q of the make-model BF16 file"
  if ! wait_made "$name"; then
    say "$name: skipped (not made in time, or making it failed: $LOGS/make-$like.log)"
    bench_py entry "$M/$name.entry.json" "$like" "$q" --made-by "$made_by" --skipped "not made within the budget"
    return
  fi
  if [ "$(left)" -le "$MIN_LEFT" ]; then
    say "$name: skipped (out of time)"
    bench_py entry "$M/$name.entry.json" "$like" "$q" --gguf "$f" --made-by "$made_by" --skipped "out of time"
    return
  fi
  say "$name: made in $(cat "$M/$name.made") s; llama-bench"
  llama-bench -m "$f" -p 512 -n 128 -r "$REPS" -ngl 99 -o json >"$WORK/$name.lb.json" 2>"$LOGS/$name.lb.log" \
    || say "$name: llama-bench failed (tail: $(tail -n 3 "$LOGS/$name.lb.log" | tr '\n' ' '))"
  local port pid
  port=$(free_port)
  llama-server -m "$f" --host 127.0.0.1 --port "$port" -ngl 99 -c "$CTX" -np "$PARALLEL" -a "$name" \
    >"$LOGS/$name.server.log" 2>&1 &
  pid=$!
  JOBS+=("$pid")
  if wait_health "$port" "$pid"; then
    say "$name: served sweep at $LEVELS"
    bench_py sweep "http://127.0.0.1:$port/v1" "$name" "$WORK/$name.sweep.json" --concurrency "$LEVELS" \
      ${REQUESTS:+--requests "$REQUESTS"} --duration "$POINT_S" --results "$WORK/runs" 2>>"$LOGS/$name.sweep.log" \
      | tee -a "$LOG" \
      || say "$name: sweep failed (tail: $(tail -n 3 "$LOGS/$name.sweep.log" | tr '\n' ' '))"
  else
    say "$name: llama-server did not come up (tail: $(tail -n 3 "$LOGS/$name.server.log" | tr '\n' ' '))"
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  bench_py entry "$M/$name.entry.json" "$like" "$q" --gguf "$f" --llama-bench "$WORK/$name.lb.json" \
    --sweep "$WORK/$name.sweep.json" --made-by "$made_by" --make-s "$(cat "$M/$name.made")"
  # Measured files go at once (disk); BF16 stays until both quantizations of it are done.
  [ "$q" = BF16 ] || rm -f "$f"
}

for like in "${SIZES[@]}"; do
  for q in "${QUANTS[@]}"; do measure "$like" "$q"; done
  rm -f "$M/$like"-*.gguf  # the next size needs the disk (8B at three precisions: 30 GB)
done

# ---- report --------------------------------------------------------------------------------------------------
for pid in "${JOBS[@]}"; do kill "$pid" 2>/dev/null || true; done
cp -f "$BIN/build.json" "$WORK/build.json" 2>/dev/null || cp -f "$BIN/../build.json" "$WORK/build.json" 2>/dev/null || true
cp -f "$DIST/manifest.json" "$WORK/pack.json" 2>/dev/null || true
printf '{"mode": "%s", "budget_s": %s, "elapsed_s": %s, "cpus": %s, "levels": "%s", "context": %s, "parallel": %s}\n' \
  "$MODE" "$BUDGET_S" "$SECONDS" "$THREADS" "$LEVELS" "$CTX" "$PARALLEL" \
  >"$WORK/run.json"
dry_flag=()
[ "$MODE" = gpu ] || dry_flag=(--dry-run)
bench_py report "$WORK" "$OUT_DIR/gpu_run.json" "$OUT_DIR/gpu_run.png" "${dry_flag[@]}" | tee -a "$LOG"
for f in "$LOGS"/*.log; do
  { echo "---- $(basename "$f") (last 20 lines)"; tail -n 20 "$f"; } >>"$LOG"
done
say "done in $SECONDS s (budget $BUDGET_S s)"
