#!/usr/bin/env bash
# Build llama.cpp's server tools once per (source version, backend, arch) and cache them, with their source.
#
# A CPU build takes minutes and a CUDA build longer; CI runs and redeploys reuse the cached binaries, so the
# cache directory is keyed by everything that changes the machine code: source version, backend, GPU arch.
#
# Env (all optional):
#   SOURCE    pypi | git | tarball                                          (default pypi)
#   VERSION   pypi: llama-cpp-python version, its sdist vendors llama.cpp  (default 0.3.36)
#             git: a llama.cpp tag, e.g. b7400; tarball: a label (default: read from the file name)
#   TARBALL   tarball: path on this host of an llama-cpp-python sdist or a llama.cpp source tree (.tar.gz)
#   BACKEND   cpu | cuda | rocm                                             (default cpu)
#   ARCH      cpu: native (-march=native) | portable (AVX2 baseline); cuda: compute capabilities without the dot,
#             e.g. 90 or 89;90 (built as machine code only: 90 -> CMAKE_CUDA_ARCHITECTURES=90-real);
#             rocm: GPU_TARGETS, e.g. gfx942                                (default native / required)
#   TARGETS   cmake targets to build      (default "llama-server llama-bench llama-quantize")
#   CACHE     cache root                  (default $HOME/.cache/mistral-lab)
#   JOBS      parallel compile jobs       (default: all cores)
#   PYPI_URL  package index root          (default https://pypi.org)
#   GIT_URL   llama.cpp repository        (default https://github.com/ggml-org/llama.cpp)
#   KEEP_BUILD 1 keeps the cmake tree so a later run can add a target incrementally (default 1)
#   CMAKE_EXTRA extra cmake arguments, space-separated, recorded in build.json (default none); e.g. the cuBLAS
#             and driver-stub paths of a CUDA toolkit assembled from PyPI wheels, which has neither
#   CMAKE_BIN the cmake to use                (default cmake)
#   CONFIGURE_ONLY 1 stops after configuring: checks a toolchain (another cmake, another toolkit) in minutes
#             without compiling; nothing is cached. Last line: "LLAMACPP_BUILD_DIR=<dir>" (default 0)
#
# CUDA: any toolkit 12.x or 13.x with cuBLAS (nvcc's own `--list-gpu-code` decides which ARCH it can build:
# 13.x dropped sm_50..sm_72, sm_89/sm_90 need 11.8+, sm_100/sm_120 need 12.8+). The binaries need the same
# toolkit major at run time (libcudart.so.12 or .13) and a driver of at least that CUDA major, which is checked
# where nvidia-smi runs. A CUDA build links llama.cpp as shared libraries beside the programs (RUNPATH $ORIGIN):
# the CUDA kernels sit once in libggml-cuda.so instead of in each program, and the folder can be packed whole.
#
# Output: "llamacpp-build: ..." progress lines; the last line is "LLAMACPP_BIN=<dir>" for callers to parse.
# Exit codes: 0 built or cached, 2 missing tool or bad input, other: the failing step's code.
set -euo pipefail

SOURCE="${SOURCE:-pypi}"
VERSION="${VERSION:-}"
TARBALL="${TARBALL:-}"
BACKEND="${BACKEND:-cpu}"
ARCH="${ARCH:-}"
TARGETS="${TARGETS:-llama-server llama-bench llama-quantize}"
CACHE="${CACHE:-$HOME/.cache/mistral-lab}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
PYPI_URL="${PYPI_URL:-https://pypi.org}"
GIT_URL="${GIT_URL:-https://github.com/ggml-org/llama.cpp}"
KEEP_BUILD="${KEEP_BUILD:-1}"
CMAKE_EXTRA="${CMAKE_EXTRA:-}"
CMAKE_BIN="${CMAKE_BIN:-cmake}"
CONFIGURE_ONLY="${CONFIGURE_ONLY:-0}"
PACKAGE=llama-cpp-python
# Bumped when the build recipe changes what a cached key holds; older caches are rebuilt.
RECIPE=2

say() { echo "llamacpp-build: $*"; }
die() {
  echo "llamacpp-build: error: $1" >&2
  [ -n "${2:-}" ] && echo "llamacpp-build:   fix: $2" >&2
  exit "${3:-2}"
}
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH" "$2"; }

# "13.0" from nvcc's "Cuda compilation tools, release 13.0, V13.0.88".
nvcc_release() { { nvcc --version 2>/dev/null || true; } | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1; }
# The newest CUDA the installed driver runs ("12.8"), from nvidia-smi's header; empty where no driver answers.
driver_cuda() {
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  { nvidia-smi 2>/dev/null || true; } | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1
}
# 89;90 -> 89-real;90-real: machine code only. PTX would let a newer GPU JIT-compile the kernels, but each host
# builds for its own GPUs (the key names them), and PTX doubles the size of libggml-cuda.so.
real_archs() {
  local out="" a
  for a in ${1//;/ }; do out="$out;$a-real"; done
  echo "${out#;}"
}

# JSON string escaping for the few values build.json holds (paths, flags, versions).
json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

json_list() {
  local first=1 item
  printf '['
  for item in "$@"; do
    [ $first = 1 ] || printf ', '
    json_str "$item"
    first=0
  done
  printf ']'
}

# Reads PyPI's JSON API document on stdin; prints the sdist's URL (resolved against the document's URL, since
# a mirror may give relative links) and its sha256.
SDIST_FROM_JSON='
import json, sys, urllib.parse
base, version = sys.argv[1], sys.argv[2]
doc = json.load(sys.stdin)
files = doc.get("urls") if doc["info"]["version"] == version else None
files = files or doc.get("releases", {}).get(version, [])
sdists = [f for f in files if f["packagetype"] == "sdist"]
if sdists:
    print(urllib.parse.urljoin(base, sdists[0]["url"]), sdists[0]["digests"]["sha256"])
'

# Everything runs inside main, called with stdin from /dev/null: a host may feed this script to bash on stdin,
# and bash must have read all of it before a child (curl, pip, cmake) could read from that stream.
main() {
  # ---- inputs ------------------------------------------------------------------------------------------------
  case "$SOURCE" in
    pypi) VERSION="${VERSION:-0.3.36}" ;;
    git) [ -n "$VERSION" ] || die "SOURCE=git needs VERSION (a llama.cpp tag)" "set VERSION=b7400 (a tag of $GIT_URL)" ;;
    tarball)
      [ -n "$TARBALL" ] || die "SOURCE=tarball needs TARBALL" "set TARBALL to the .tar.gz path on this host"
      [ -f "$TARBALL" ] || die "TARBALL $TARBALL does not exist" "upload the source archive first"
      if [ -z "$VERSION" ]; then
        VERSION=$(basename "$TARBALL")
        VERSION=${VERSION%.tar.gz}
        VERSION=${VERSION%.tgz}
        # An uploaded llama-cpp-python sdist gets the same key as the one downloaded from PyPI.
        VERSION=${VERSION#llama_cpp_python-}
      fi
      ;;
    *) die "SOURCE=$SOURCE is not one of pypi, git, tarball" "set SOURCE=pypi (default)" ;;
  esac
  [[ "$VERSION" =~ ^[A-Za-z0-9._+-]+$ ]] || die "VERSION=$VERSION has characters unfit for a directory name" \
    "use letters, digits and . _ + -"

  case "$BACKEND" in
    cpu)
      ARCH="${ARCH:-native}"
      [ "$ARCH" = native ] || [ "$ARCH" = portable ] || die "ARCH=$ARCH is not native or portable for BACKEND=cpu" \
        "set ARCH=native (this CPU) or ARCH=portable (runs on any AVX2 x86-64)"
      ;;
    cuda)
      [[ "$ARCH" =~ ^[0-9]+[a-z]?(;[0-9]+[a-z]?)*$ ]] || die "BACKEND=cuda needs ARCH, the CUDA architecture" \
        "set ARCH from the GPU's compute capability: 9.0 -> 90 (H100/H200), 8.0 -> 80 (A100), 8.9 -> 89 (L40S)"
      ;;
    rocm)
      [[ "$ARCH" =~ ^gfx[0-9a-f]+$ ]] || die "BACKEND=rocm needs ARCH, the AMD gfx target" \
        "set ARCH=gfx942 (MI300X) or the value rocminfo reports"
      ;;
    *) die "BACKEND=$BACKEND is not one of cpu, cuda, rocm" "set BACKEND=cpu" ;;
  esac

  CUDA_RELEASE=""
  if [ "$BACKEND" = cuda ]; then
    if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
      PATH="/usr/local/cuda/bin:$PATH"
    fi
    if command -v nvcc >/dev/null 2>&1; then CUDA_RELEASE=$(nvcc_release); fi
  fi

  KEY="$VERSION-$BACKEND-${ARCH//;/_}"
  ROOT="$CACHE/llama.cpp"
  SRC_CACHE="$ROOT/src"
  DEST="$ROOT/$KEY"
  BIN="$DEST/bin"
  mkdir -p "$SRC_CACHE" "$DEST"

  # Two processes asking for the same key (pytest -n 2, two deploy steps) take turns: the second finds the cache.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$DEST.lock"
    if ! flock -n 9; then
      say "waiting for another build of $KEY to finish"
      flock 9
    fi
  fi

  # shellcheck disable=SC2206  # TARGETS is a space-separated list by design
  TARGET_LIST=($TARGETS)
  missing=()
  for t in "${TARGET_LIST[@]}"; do
    [ -x "$BIN/$t" ] || missing+=("$t")
  done
  # A cache made by an older recipe of this script may hold binaries that do not run here (see cpu_flags): rebuild.
  # A CUDA build also names its toolkit: after a toolkit upgrade its programs would look for the old libcudart.
  fresh_toolkit() {
    [ -z "$CUDA_RELEASE" ] && return 0
    [[ "$(<"$DEST/build.json")" == *"\"cuda_version\": \"$CUDA_RELEASE\""* ]] && return 0
    say "cache: $KEY was built with another CUDA toolkit than nvcc $CUDA_RELEASE here: rebuilding"
    return 1
  }
  if [ -f "$DEST/build.json" ] && [ ${#missing[@]} = 0 ] && [[ "$(<"$DEST/build.json")" == *"\"recipe\": $RECIPE,"* ]] \
    && fresh_toolkit; then
    say "cached: $KEY already built ($TARGETS), skipping the build"
    echo "LLAMACPP_BIN=$BIN"
    exit 0
  fi

  # ---- tools -------------------------------------------------------------------------------------------------
  # nvcc itself lists the machine code it can emit, which is what moves between CUDA releases (13.0 dropped
  # sm_50..sm_72; 12.8 added sm_100 and sm_120): asking it keeps this check right for releases not written here.
  check_cuda_archs() {
    local codes a
    codes=" $(nvcc --list-gpu-code 2>/dev/null | tr '\n' ' ')"
    [ "$codes" != " " ] || return 0  # an nvcc too old to list them: cmake's configure says it instead
    for a in ${ARCH//;/ }; do
      [[ "$codes" == *" sm_${a%[a-z]} "* ]] || die "CUDA $CUDA_RELEASE cannot build sm_$a (it builds:${codes% })" \
        "use a toolkit that has it: CUDA 12.x for sm_50..sm_72, 11.8+ for sm_89/sm_90, 12.8+ for sm_100/sm_120"
    done
  }
  # Programs linked against CUDA N's runtime need a driver that runs CUDA N: a newer toolkit than the driver
  # builds fine and fails at the first call (cudaErrorInsufficientDriver), so it is refused before the build.
  check_cuda_driver() {
    local drv
    drv=$(driver_cuda)
    [ -n "$drv" ] || return 0  # no GPU here (a build machine): the host that runs it checks
    [ "${drv%%.*}" -ge "${CUDA_RELEASE%%.*}" ] || die "the driver runs CUDA up to $drv, nvcc is CUDA $CUDA_RELEASE" \
      "install the toolkit of the driver's CUDA major (apt-get install -y cuda-toolkit-${drv%%.*}-x) or a newer driver"
  }

  APT_HINT="apt-get install -y cmake build-essential git curl"
  need "$CMAKE_BIN" "$APT_HINT"
  need make "$APT_HINT"
  need tar "$APT_HINT"
  if command -v cc >/dev/null 2>&1; then CC_BIN=cc; else CC_BIN=gcc; fi
  need "$CC_BIN" "$APT_HINT"
  if command -v c++ >/dev/null 2>&1; then CXX_BIN="c++"; else CXX_BIN="g++"; fi
  need "$CXX_BIN" "$APT_HINT"
  case "$BACKEND" in
    cuda)
      if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
        PATH="/usr/local/cuda/bin:$PATH"
      fi
      need nvcc "install the CUDA toolkit (apt-get install -y cuda-toolkit) or put /usr/local/cuda/bin on PATH"
      CUDA_RELEASE=$(nvcc_release)
      [ -n "$CUDA_RELEASE" ] || die "cannot read the CUDA release from nvcc --version" "check that nvcc runs"
      check_cuda_archs
      check_cuda_driver
      ;;
    rocm)
      if ! command -v hipconfig >/dev/null 2>&1 && [ -x /opt/rocm/bin/hipconfig ]; then
        PATH="/opt/rocm/bin:$PATH"
      fi
      need hipconfig "install ROCm's HIP SDK (apt-get install -y rocm-hip-sdk) or put /opt/rocm/bin on PATH"
      ;;
  esac

  # ---- source ------------------------------------------------------------------------------------------------
  # Each source is fetched once into $SRC_CACHE and extracted once; both stay for later builds.
  fetch_pypi_sdist() {
    local archive="$SRC_CACHE/llama_cpp_python-$VERSION.tar.gz"
    if [ -f "$archive" ]; then
      say "source: cached $archive" >&2
      echo "$archive"
      return
    fi
    local part="$archive.part" got=""
    if command -v curl >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
      say "source: downloading $PACKAGE $VERSION sdist from $PYPI_URL" >&2
      # The JSON API names the sdist URL and its sha256; a mirror may only serve the whole-project document.
      local meta doc_url="$PYPI_URL/pypi/$PACKAGE/$VERSION/json"
      if ! meta=$(curl -fsSL "$doc_url" 2>/dev/null); then
        doc_url="$PYPI_URL/pypi/$PACKAGE/json"
        meta=$(curl -fsSL "$doc_url" 2>/dev/null) || meta=""
      fi
      if [ -n "$meta" ]; then
        local url_sha
        url_sha=$(printf '%s' "$meta" | python3 -c "$SDIST_FROM_JSON" "$doc_url" "$VERSION") || true
        if [ -n "$url_sha" ]; then
          curl -fsSL --retry 3 -o "$part" "${url_sha% *}"
          echo "${url_sha#* }  $part" | sha256sum -c --quiet - >&2 || die "sha256 mismatch for ${url_sha% *}" \
            "retry; if it persists the index serves a different file than its metadata names" 1
          mv "$part" "$archive"
          got=1
        fi
      fi
    fi
    if [ -z "$got" ]; then
      command -v python3 >/dev/null 2>&1 || die "cannot download the sdist: neither curl+python3 nor pip work" \
        "install curl and python3, or upload the sdist and use SOURCE=tarball"
      say "source: pip download $PACKAGE==$VERSION (sdist)" >&2
      python3 -m pip download --quiet --no-deps --no-binary :all: "$PACKAGE==$VERSION" -d "$SRC_CACHE" >&2 \
        || die "pip could not download $PACKAGE==$VERSION" "check the version exists on PyPI and the index is reachable" 1
    fi
    [ -f "$archive" ] || die "no sdist at $archive after download" "check $PACKAGE==$VERSION has an sdist" 1
    echo "$archive"
  }

  extract() {  # archive -> directory holding its contents
    local archive=$1 dir=$2
    if [ ! -f "$dir/.extracted" ]; then
      say "source: extracting $(basename "$archive")" >&2
      rm -rf "$dir" && mkdir -p "$dir"
      tar -xzf "$archive" -C "$dir"
      touch "$dir/.extracted"
    fi
  }

  find_tree() {  # the llama.cpp root inside an extracted archive: a vendored copy or the archive itself
    local dir=$1 c
    for c in "$dir"/*/vendor/llama.cpp "$dir"/vendor/llama.cpp "$dir"/* "$dir"; do
      if [ -f "$c/CMakeLists.txt" ] && [ -d "$c/ggml" ] && [ -d "$c/tools/server" ]; then
        echo "$c"
        return
      fi
    done
    die "no llama.cpp tree (CMakeLists.txt, ggml/, tools/server/) in $dir" \
      "give an llama-cpp-python sdist or a llama.cpp source archive" 1
  }

  # The commit llama-cpp-python vendored, from its CHANGELOG ("feat: update llama.cpp to ggml-org/llama.cpp@<sha>"):
  # the sdist carries no .git, so this is the only record of it.
  changelog_commit() {
    local changelog=$1
    [ -f "$changelog" ] || return 0
    awk -v v="$VERSION" '
      /^## \[/ { inside = (index($0, "[" v "]") > 0) ; if (done) exit }
      inside && match($0, /llama\.cpp@[0-9a-f]+/) { print substr($0, RSTART + 10, RLENGTH - 10); done = 1; exit }
    ' "$changelog"
  }

  COMMIT=""
  case "$SOURCE" in
    pypi)
      ARCHIVE=$(fetch_pypi_sdist)
      EXTRACT="$SRC_CACHE/$PACKAGE-$VERSION"
      extract "$ARCHIVE" "$EXTRACT"
      TREE=$(find_tree "$EXTRACT")
      COMMIT=$(changelog_commit "$TREE/../../CHANGELOG.md")
      SOURCE_DESC="$PACKAGE==$VERSION sdist (vendor/llama.cpp)"
      ;;
    tarball)
      EXTRACT="$SRC_CACHE/tarball-$VERSION"
      extract "$TARBALL" "$EXTRACT"
      TREE=$(find_tree "$EXTRACT")
      if [ -f "$TREE/../../CHANGELOG.md" ]; then COMMIT=$(changelog_commit "$TREE/../../CHANGELOG.md"); fi
      if [ -z "$COMMIT" ] && [ -d "$TREE/.git" ]; then COMMIT=$(git -C "$TREE" rev-parse --short=9 HEAD 2>/dev/null || true); fi
      SOURCE_DESC="tarball $(basename "$TARBALL")"
      ;;
    git)
      need git "$APT_HINT"
      TREE="$SRC_CACHE/git-$VERSION"
      if [ ! -f "$TREE/CMakeLists.txt" ]; then
        say "source: cloning $GIT_URL at $VERSION"
        rm -rf "$TREE"
        git clone --quiet --depth 1 --branch "$VERSION" "$GIT_URL" "$TREE" \
          || die "git clone of $GIT_URL at $VERSION failed" "check the tag exists and github.com is reachable" 1
      else
        say "source: cached clone $TREE"
      fi
      COMMIT=$(git -C "$TREE" rev-parse --short=9 HEAD)
      SOURCE_DESC="git $GIT_URL@$VERSION"
      ;;
  esac
  COMMIT="${COMMIT:-unknown}"
  say "source: $SOURCE_DESC, llama.cpp commit $COMMIT, tree $TREE"

  # ---- configure and build -----------------------------------------------------------------------------------
  # -march=native trusts CPUID. Some VMs (Firecracker among them) advertise AMX but leave its tile state off, so
  # AMX code dies with SIGILL on the first Q4_K/Q8_0 matmul. Where AMX is advertised, a tiny program tries a
  # tile instruction; if that traps, the native feature set is spelled out without AMX.
  amx_runs() {
    local dir
    dir=$(mktemp -d)
    cat >"$dir/amx.c" <<'C'
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
  unsigned char cfg[64];
  if (syscall(SYS_arch_prctl, 0x1023, 18)) return 1; /* ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA */
  memset(cfg, 0, sizeof cfg);
  cfg[0] = 1; cfg[16] = 64; cfg[48] = 16;
  _tile_loadconfig(cfg);
  _tile_zero(0);
  _tile_release();
  return 0;
}
C
    local ok=1
    if "$CC_BIN" -O1 -mamx-tile "$dir/amx.c" -o "$dir/amx" >/dev/null 2>&1 && (ulimit -c 0; "$dir/amx") 2>/dev/null; then
      ok=0
    fi
    rm -rf "$dir"
    return $ok
  }
  cpu_flags() {
    local cpu
    cpu=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
    if [[ "$cpu" != *" amx_tile "* ]] || amx_runs; then
      FLAGS+=(-DGGML_NATIVE=ON)
      return
    fi
    say "configure: this CPU advertises AMX but cannot run it: building its other native features without AMX"
    has() { for f in "$@"; do [[ "$cpu" == *" $f "* ]] || return 1; done; }
    onoff() { if has "${@:2}"; then FLAGS+=("-D$1=ON"); else FLAGS+=("-D$1=OFF"); fi; }
    FLAGS+=(-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
    onoff GGML_SSE42 sse4_2
    onoff GGML_F16C f16c
    onoff GGML_FMA fma
    onoff GGML_BMI2 bmi2
    onoff GGML_AVX avx
    onoff GGML_AVX2 avx2
    onoff GGML_AVX_VNNI avx_vnni
    onoff GGML_AVX512 avx512f avx512cd avx512vl avx512dq avx512bw
    onoff GGML_AVX512_VBMI avx512vbmi
    onoff GGML_AVX512_VNNI avx512_vnni
    onoff GGML_AVX512_BF16 avx512_bf16
  }

  BUILD="$DEST/build"
  SHARED_LIBS=OFF
  [ "$BACKEND" = cuda ] && SHARED_LIBS=ON
  FLAGS=(
    -DCMAKE_BUILD_TYPE=Release
    "-DBUILD_SHARED_LIBS=$SHARED_LIBS"
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    # The web UI would be fetched from a Hugging Face bucket at build time; we only need the HTTP API.
    -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_BUILD_UI=OFF
    "-DLLAMA_BUILD_COMMIT=$COMMIT"
  )
  case "$BACKEND" in
    cpu)
      FLAGS+=(-DGGML_CUDA=OFF)
      if [ "$ARCH" = native ]; then cpu_flags; else FLAGS+=(-DGGML_NATIVE=OFF); fi
      ;;
    cuda)
      # The host-side CPU code is portable (AVX2): GPU layers do the work, and the folder may be packed for
      # another machine. NCCL only helps split-mode row across GPUs and would be linked only where installed.
      # RUNPATH $ORIGIN finds the libraries beside the programs; the toolkit's own folders follow it.
      FLAGS+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$(real_archs "$ARCH")" -DGGML_NATIVE=OFF -DGGML_CUDA_NCCL=OFF
        -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON "-DCMAKE_INSTALL_RPATH=\$ORIGIN" -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON)
      ;;
    rocm)
      FLAGS+=(-DGGML_HIP=ON "-DGPU_TARGETS=$ARCH")
      HIPCXX="$(hipconfig -l)/clang"
      HIP_PATH="$(hipconfig -R)"
      export HIPCXX HIP_PATH
      ;;
  esac
  if [ -n "$CMAKE_EXTRA" ]; then
    read -r -a EXTRA <<<"$CMAKE_EXTRA"
    FLAGS+=("${EXTRA[@]}")
  fi
  GENERATOR=()
  if command -v ninja >/dev/null 2>&1; then GENERATOR=(-G Ninja); fi

  # The known causes of a failed configure, each with its fix.
  configure_fix() {
    local log=$1
    if grep -q "unsupported GNU version\|unsupported clang version" "$log"; then
      echo "nvcc $CUDA_RELEASE refuses this host compiler: install an older g++ and set CUDAHOSTCXX=g++-12 (e.g.)"
    elif grep -qi "cublas" "$log"; then
      echo "the CUDA toolkit has no cuBLAS: apt-get install -y libcublas-dev-${CUDA_RELEASE/./-} (or cuda-toolkit)"
    elif grep -q "CUDA::cuda_driver\|CUDA_cuda_driver_LIBRARY" "$log"; then
      echo "the CUDA toolkit has no driver stub (lib64/stubs/libcuda.so): install cuda-toolkit, or pass its path"
    else
      echo "read the log; a missing toolkit or compiler is the usual cause"
    fi
  }

  START=$SECONDS
  # Configured every time (seconds): a kept tree picks up changed flags and recompiles only what they touch.
  if [ -f "$BUILD/CMakeCache.txt" ]; then GENERATOR=(); fi
  say "configure: cmake ${FLAGS[*]}"
  "$CMAKE_BIN" -S "$TREE" -B "$BUILD" "${GENERATOR[@]}" "${FLAGS[@]}" >"$DEST/configure.log" 2>&1 \
    || { tail -n 40 "$DEST/configure.log" >&2; die "cmake configure failed (log: $DEST/configure.log)" \
      "$(configure_fix "$DEST/configure.log")" 1; }
  if [ "$CONFIGURE_ONLY" = 1 ]; then
    say "configured in $((SECONDS - START)) s (CONFIGURE_ONLY=1: nothing built or cached)"
    echo "LLAMACPP_BUILD_DIR=$BUILD"
    exit 0
  fi
  say "build: ${TARGET_LIST[*]} with $JOBS jobs (minutes on a few cores)"
  # Progress lines from cmake are kept in the log; a line every 30 s tells the caller we are alive.
  # The ticker drops the lock's fd and takes its sleep with it when stopped, so neither the lock nor the
  # caller's stdout pipe outlives this script.
  ticker() {
    exec 9>&-
    local pid=""
    trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; exit 0' TERM
    while true; do
      sleep 30 &
      pid=$!
      wait "$pid"
      say "build: still compiling ($((SECONDS - START)) s)"
    done
  }
  ticker &
  TICKER=$!
  trap 'kill "$TICKER" 2>/dev/null || true' EXIT
  if ! "$CMAKE_BIN" --build "$BUILD" --config Release -j "$JOBS" --target "${TARGET_LIST[@]}" >"$DEST/build.log" 2>&1; then
    tail -n 40 "$DEST/build.log" >&2
    die "build failed (log: $DEST/build.log)" "read the log; retry after fixing, the cmake tree is kept" 1
  fi
  kill "$TICKER" 2>/dev/null || true
  SECS=$((SECONDS - START))

  # ---- install into the cache --------------------------------------------------------------------------------
  mkdir -p "$BIN"
  # Libraries first: a program is only usable once the libraries it names are in place.
  LIBS=()
  if [ "$SHARED_LIBS" = ON ]; then
    for f in "$BUILD"/bin/lib*.so*; do
      [ -e "$f" ] || continue
      cp -Pf "$f" "$BIN/" && LIBS+=("$(basename "$f")")
    done
  fi
  for t in "${TARGET_LIST[@]}"; do
    [ -x "$BUILD/bin/$t" ] || die "built tree has no bin/$t" "check the target name" 1
    cp -f "$BUILD/bin/$t" "$BIN/$t.tmp" && mv -f "$BIN/$t.tmp" "$BIN/$t"
  done
  BUILT=()
  for f in "$BIN"/*; do
    case "$(basename "$f")" in lib*.so*) ;; *) BUILT+=("$(basename "$f")") ;; esac
  done
  {
    printf '{\n'
    printf '  "key": %s,\n' "$(json_str "$KEY")"
    printf '  "recipe": %s,\n' "$RECIPE"
    printf '  "source": %s,\n' "$(json_str "$SOURCE")"
    printf '  "source_desc": %s,\n' "$(json_str "$SOURCE_DESC")"
    printf '  "version": %s,\n' "$(json_str "$VERSION")"
    printf '  "llama_cpp_commit": %s,\n' "$(json_str "$COMMIT")"
    printf '  "backend": %s,\n' "$(json_str "$BACKEND")"
    printf '  "arch": %s,\n' "$(json_str "$ARCH")"
    printf '  "targets": %s,\n' "$(json_list "${BUILT[@]}")"
    printf '  "libraries": %s,\n' "$(json_list "${LIBS[@]}")"
    printf '  "cmake_flags": %s,\n' "$(json_list "${FLAGS[@]}")"
    [ -z "$CUDA_RELEASE" ] || printf '  "cuda_version": %s,\n' "$(json_str "$CUDA_RELEASE")"
    printf '  "jobs": %s,\n' "$JOBS"
    printf '  "build_seconds": %s,\n' "$SECS"
    printf '  "compiler": %s,\n' "$(json_str "$("$CXX_BIN" --version | head -n 1)")"
    printf '  "host_cpu": %s,\n' "$(json_str "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null)")"
    printf '  "built_at": %s\n' "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
    printf '}\n'
  } >"$DEST/build.json.tmp"
  mv -f "$DEST/build.json.tmp" "$DEST/build.json"
  if [ "$KEEP_BUILD" != 1 ]; then rm -rf "$BUILD"; fi
  say "built ${TARGET_LIST[*]} in $SECS s -> $BIN"
  echo "LLAMACPP_BIN=$BIN"
}

main "$@" </dev/null
