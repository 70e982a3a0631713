#!/usr/bin/env bash
# Pack what benchmarks/gpu_run.sh needs on a lent GPU into benchmarks/gpu/dist/ (git-ignored: `dist/`):
#   llama.cpp-cuda-sm90.tar.xz  the sm_90 CUDA build (infra/llamacpp-build.sh, BACKEND=cuda ARCH=90): the three
#                               programs and their shared libraries, stripped, xz-compressed
#   wheels/                     the Python packages the device image lacks (benchmarks/gpu/wheels.py)
#   manifest.json               sizes and sha256 of the above, and the build's build.json
# The archive is a binary built from third-party code: it travels with the device call, it is never committed.
# Build it first with: .venv/bin/python benchmarks/build_cuda.py --arch 90
#
# Env: CACHE (build cache root, default ~/.cache/mistral-lab), PY (python with pip; default .venv/bin/python),
#      LIMIT_MIB (what the device call may carry with the tree, default 60).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIST="$ROOT/benchmarks/gpu/dist"
CACHE="${CACHE:-$HOME/.cache/mistral-lab}"
PY="${PY:-$ROOT/.venv/bin/python}"
LIMIT_MIB="${LIMIT_MIB:-60}"
KEY=0.3.36-cuda-90
SRC="$CACHE/llama.cpp/$KEY/bin"
PROGRAMS=(llama-server llama-bench llama-quantize)

say() { echo "gpu-pack: $*"; }
die() {
  echo "gpu-pack: error: $1" >&2
  exit "${2:-1}"
}

[ -f "$SRC/../build.json" ] || die "no CUDA build at $SRC: .venv/bin/python benchmarks/build_cuda.py --arch 90" 2
grep -q '"arch": "90"' "$SRC/../build.json" || die "$SRC/../build.json is not an sm_90 build" 2

rm -rf "$DIST"
STAGE="$DIST/.stage/llama.cpp"
mkdir -p "$STAGE" "$DIST/wheels"
for p in "${PROGRAMS[@]}"; do cp "$SRC/$p" "$STAGE/"; done
cp -P "$SRC"/lib*.so* "$STAGE/"
cp "$SRC/../build.json" "$STAGE/build.json"
# OpenMP's runtime comes along: a minimal image may lack libgomp1, and it is small. Everything else the
# programs need is the C/C++ runtime, OpenSSL 3, the driver and the CUDA libraries beside torch.
gomp=$(ldd "$STAGE/libggml-cpu.so" 2>/dev/null | awk '/libgomp/ {print $3}')
[ -z "$gomp" ] || cp -L "$gomp" "$STAGE/"
# Symbols are a third of the bytes and nothing at run time reads them; the kernels are in .nv_fatbin, untouched.
for f in "$STAGE"/*; do
  [ -L "$f" ] || [ ! -f "$f" ] || [ "$(basename "$f")" = build.json ] || strip --strip-unneeded "$f"
done
say "staged $(du -sh "$STAGE" | cut -f1) ($(find "$STAGE" -type f | wc -l) files)"
tar -C "$DIST/.stage" -cf - llama.cpp | xz -9e -T0 >"$DIST/llama.cpp-cuda-sm90.tar.xz"
staged_bytes=$(du -sb "$STAGE" | cut -f1)
rm -rf "$DIST/.stage"

"$PY" "$ROOT/benchmarks/gpu/wheels.py" "$DIST/wheels"

archive_bytes=$(stat -c %s "$DIST/llama.cpp-cuda-sm90.tar.xz")
wheel_bytes=$(du -sb "$DIST/wheels" | cut -f1)
"$PY" - "$DIST" "$SRC/../build.json" "$staged_bytes" <<'PY'
import hashlib, json, sys
from pathlib import Path
dist, build, staged = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), int(sys.argv[3])
files = sorted(p for p in dist.rglob("*") if p.is_file())
doc = {
    "archive": "llama.cpp-cuda-sm90.tar.xz",
    "unpacked_bytes": staged,
    "files": {str(p.relative_to(dist)): {"bytes": p.stat().st_size,
                                         "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files},
    "build": build,
}
(dist / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
PY
total=$((archive_bytes + wheel_bytes))
say "archive $((archive_bytes / 1048576)) MiB (unpacked $((staged_bytes / 1048576)) MiB), wheels $((wheel_bytes / 1048576)) MiB"
[ $((total / 1048576)) -lt "$LIMIT_MIB" ] || die "the pack is $((total / 1048576)) MiB, over $LIMIT_MIB MiB"
say "ready: carry benchmarks/gpu/dist"
