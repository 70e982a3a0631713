#!/usr/bin/env bash
# Print one JSON object of raw facts about this machine, in one round trip: OS, CPUs, RAM, free disk, GPUs.
# Tool output (nvidia-smi, rocm-smi, nvcc) is passed through as strings: parsing lives in
# mistral_lab/hosts/facts.py, where it is tested. Must work on any Linux, with or without GPU tools.
# Free disk is measured where commands run (the home directory over SSH, the work directory locally).
set -u
export LC_ALL=C

have() { command -v "$1" >/dev/null 2>&1; }

# A hung GPU driver can make nvidia-smi block for minutes; never let facts hang on it.
bounded() {
  if have timeout; then timeout 20 "$@"; else "$@"; fi
}

# JSON string from any text: escape backslash, quote and the whitespace controls, drop the other controls.
json_str() {
  local s
  s=$(printf '%s' "$1" | tr -d '\000-\010\013\014\016-\037')
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  printf '"%s"' "$s"
}

sep="{"
emit() {
  printf '%s%s:%s' "$sep" "$(json_str "$1")" "$(json_str "$2")"
  sep=","
}

os_pretty=""
if [ -r /etc/os-release ]; then
  # shellcheck source=/dev/null
  os_pretty=$(. /etc/os-release 2>/dev/null && printf '%s' "${PRETTY_NAME:-${NAME:-}}")
fi

cpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0)
mem_kb=$(awk '/^MemTotal:/ {print $2; exit}' /proc/meminfo 2>/dev/null || echo 0)
disk_free_kb=$(df -Pk . 2>/dev/null | awk 'NR == 2 {print $4}')

nvidia_fields=""
nvidia_query=""
nvidia_header=""
nvidia_error=""
if have nvidia-smi; then
  # compute_cap is missing from older drivers' nvidia-smi; ask again without it.
  nvidia_fields="name,memory.total,compute_cap,driver_version"
  if ! nvidia_query=$(bounded nvidia-smi --query-gpu="$nvidia_fields" --format=csv,noheader,nounits 2>&1); then
    nvidia_fields="name,memory.total,driver_version"
    if ! nvidia_query=$(bounded nvidia-smi --query-gpu="$nvidia_fields" --format=csv,noheader,nounits 2>&1); then
      nvidia_error=$nvidia_query
      nvidia_query=""
    fi
  fi
  # The header names the newest CUDA the driver supports ("CUDA Version: 12.4").
  nvidia_header=$(bounded nvidia-smi 2>/dev/null | head -n 5)
fi

nvcc_version=""
if have nvcc; then
  nvcc_version=$(nvcc --version 2>/dev/null | tail -n 2)
elif [ -x /usr/local/cuda/bin/nvcc ]; then
  nvcc_version=$(/usr/local/cuda/bin/nvcc --version 2>/dev/null | tail -n 2)
fi

rocm_smi=""
rocm_error=""
if have rocm-smi; then
  if ! rocm_smi=$(bounded rocm-smi --showproductname --showmeminfo vram --showdriverversion --json 2>&1); then
    rocm_error=$rocm_smi
    rocm_smi=""
  fi
fi

rocm_version=""
if [ -r /opt/rocm/.info/version ]; then
  rocm_version=$(head -n 1 /opt/rocm/.info/version)
fi

systemd=0
if [ -d /run/systemd/system ]; then systemd=1; fi

python=""
if have python3; then
  python=$(python3 -c 'import platform; print(platform.python_version())' 2>/dev/null || true)
fi

emit hostname "$(hostname 2>/dev/null || uname -n)"
emit os "$os_pretty"
emit kernel "$(uname -r)"
emit arch "$(uname -m)"
emit cpus "$cpus"
emit mem_kb "$mem_kb"
emit disk_free_kb "${disk_free_kb:-0}"
emit nvidia_fields "$nvidia_fields"
emit nvidia_query "$nvidia_query"
emit nvidia_header "$nvidia_header"
emit nvidia_error "$nvidia_error"
emit nvcc "$nvcc_version"
emit rocm_smi "$rocm_smi"
emit rocm_error "$rocm_error"
emit rocm_version "$rocm_version"
emit systemd "$systemd"
emit python "$python"
printf '}\n'
