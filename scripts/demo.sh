#!/usr/bin/env bash
# The main job, offline: the plan of every catalog model, then the deploy notebook on this machine with the
# generated tiny model. Executed notebooks land in runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
ml=.venv/bin/mistral-lab
mkdir -p runs

for id in $($ml models --json | .venv/bin/python -c 'import json,sys; print(" ".join(m["id"] for m in json.load(sys.stdin)))'); do
  target=digitalocean
  [ "$id" = tiny-random ] && target=local
  echo
  echo "### $id on $target"
  $ml plan "$id" --target "$target" || true
done

echo
echo "### notebooks/deploy.ipynb -> runs/deploy.ipynb (local target, tiny-random, dry run)"
.venv/bin/papermill notebooks/deploy.ipynb runs/deploy.ipynb -p model tiny-random -p target local -p dry_run true
