#!/usr/bin/env bash
# Everything `make demo` and `make test` need on a fresh Debian/Ubuntu machine: system packages (when root and
# missing), the project's virtual environment, and the cached builds. Safe to run again: each step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

APT_PACKAGES=(python3-venv python3-dev build-essential cmake git curl openssh-server openssh-client shellcheck systemd chromium nginx
              libnginx-mod-http-lua lua-cjson sudo iptables iproute2 certbot pebble)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing system packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/python -m pip install -q uv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  say "installing mistral-lab and its test tools into .venv"
  .venv/bin/uv pip install -q --python .venv/bin/python -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
say "environment ready: $(.venv/bin/python --version), mistral-lab $(.venv/bin/python -c 'import mistral_lab; print(mistral_lab.__version__)')"

# llama.cpp from the pinned llama-cpp-python sdist (PyPI is reachable where GitHub may not be): minutes the first
# time, then cached under ~/.cache/mistral-lab/llama.cpp/<version>-cpu-native, so demos and tests start at once.
if [ "${SKIP_LLAMACPP_BUILD:-0}" != 1 ]; then
  say "llama.cpp build (cached after the first time)"
  .venv/bin/python - <<'PY'
import os, subprocess, sys
from mistral_lab import infra_files
from mistral_lab.engines import llamacpp_build as lb
key = lb.BuildKey(source="pypi", version=lb.DEFAULT_VERSION, backend="cpu", arch="native")
script = infra_files.path(lb.SCRIPT)
r = subprocess.run(["bash", str(script)], env={**os.environ, **lb.build_env(key)})
sys.exit(r.returncode)
PY
fi
