#!/usr/bin/env bash
# The main job, offline: the plan of every catalog model, then the notebooks end to end on this machine with the
# generated tiny model: deploy -> query -> benchmark -> teardown. Executed notebooks land in runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
ml=.venv/bin/mistral-lab
pm=".venv/bin/papermill --progress-bar"
NAME=${DEMO_NAME:-demo}
mkdir -p runs
# Demo deployments are this checkout's own: they never mix with the user's other deployments.
export MISTRAL_LAB_HOME=${MISTRAL_LAB_HOME:-$PWD/runs/state}

for id in $($ml models --json | .venv/bin/python -c 'import json,sys; print(" ".join(m["id"] for m in json.load(sys.stdin)))'); do
  target=digitalocean
  [ "$id" = tiny-random ] && target=local
  echo
  echo "### $id on $target"
  $ml plan "$id" --target "$target" || true
done

# Whatever happens below, nothing is left running.
cleanup() { $ml teardown "$NAME" --yes >/dev/null 2>&1 || true; }
trap cleanup EXIT

run() {
  local nb=$1
  shift
  [ -f "notebooks/$nb.ipynb" ] || { echo "(notebooks/$nb.ipynb not there yet: skipped)"; return 0; }
  echo
  echo "### notebooks/$nb.ipynb -> runs/$nb.ipynb"
  $pm "notebooks/$nb.ipynb" "runs/$nb.ipynb" "$@"
}

run deploy -p model tiny-random -p target local -p name "$NAME"
run query -p deployment "$NAME"
run benchmark -p deployment "$NAME"
run teardown -p deployment "$NAME"
echo
echo "done: executed notebooks in runs/, timings in runs/deploy.ipynb"
