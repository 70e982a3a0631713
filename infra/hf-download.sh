#!/usr/bin/env bash
# Download a Hugging Face model repository's files into a folder on this host, with progress, once: a marker
# records the commit and the files, so a second run with the same request skips (and works offline).
#
# Which files: the first of LAYOUTS that the repository actually ships (its file list, read from the hub), so the
# serve flags follow the repository and not what a catalog expected of it. Each layout L has
#   L_REQUIRE  globs each of which must match a file (mistral: params.json consolidated*.safetensors)
#   L_ALLOW    globs of the files to fetch      L_IGNORE   globs left out (e.g. hf: consolidated*)
# with L in upper case (MISTRAL_ALLOW, HF_ALLOW, ...).
#
# Env:
#   PY          python with huggingface_hub (the vLLM venv's, or docker mode's downloader venv) (required)
#   REPO DEST   repository id and target folder (required)
#   REVISION    branch, tag or commit (default main)
#   LAYOUTS     layouts in order of preference, space-separated, e.g. "mistral hf" (required)
#   HF_ENDPOINT another hub (a mirror); default https://huggingface.co
# Secret env: HF_TOKEN, read by huggingface_hub from the environment; never printed.
#
# Output: "hf-download: ..." progress lines ("hf-download: cached: ..." when nothing had to be fetched); the last
# line is "HF_DOWNLOAD=<one-line json>" with the layout chosen.
# Exit codes: 0 done or cached, 2 bad input, 3 repository/revision/files not found or not allowed, 1 other.
set -euo pipefail

PY="${PY:-}"
REPO="${REPO:-}"
DEST="${DEST:-}"
REVISION="${REVISION:-main}"
LAYOUTS="${LAYOUTS:-}"

die() {
  echo "hf-download: error: $1" >&2
  [ -n "${2:-}" ] && echo "hf-download:   fix: $2" >&2
  exit "${3:-2}"
}

DOWNLOAD_PY='
import fnmatch, json, os, sys, threading, time
from pathlib import Path

os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # tqdm bars are carriage-return noise in a log; we print lines
from huggingface_hub import HfApi, errors, snapshot_download

repo, dest, revision = os.environ["REPO"], Path(os.environ["DEST"]), os.environ.get("REVISION") or "main"
layouts = {name: {part: os.environ.get(f"{name.upper()}_{part.upper()}", "").split()
                  for part in ("require", "allow", "ignore")}
           for name in os.environ["LAYOUTS"].split()}
endpoint = os.environ.get("HF_ENDPOINT") or None
marker = dest / ".mistral-lab-download.json"


def say(msg):
    print("hf-download: " + msg, flush=True)


def fail(msg, fix, code=3):
    print("hf-download: error: " + msg, file=sys.stderr, flush=True)
    print("hf-download:   fix: " + fix, file=sys.stderr, flush=True)
    sys.exit(code)


def wanted(name, layout):
    return any(fnmatch.fnmatch(name, p) for p in layout["allow"]) \
        and not any(fnmatch.fnmatch(name, p) for p in layout["ignore"])


def result(layout, files, cached):
    print("HF_DOWNLOAD=" + json.dumps({"layout": layout, "files": len(files), "bytes": sum(files.values()),
                                       "cached": cached}), flush=True)


def have(files):
    return all((dest / n).is_file() and (dest / n).stat().st_size == s for n, s in files.items())


def gb(n):
    return f"{n / 1e9:.2f} GB"


# A finished download of this very request needs no network at all.
if marker.is_file():
    done = json.loads(marker.read_text())
    if (done.get("repo"), done.get("revision"), done.get("layouts")) == (repo, revision, layouts) \
            and have(done.get("files", {})):
        commit, size, chosen = str(done.get("commit", "?"))[:12], sum(done["files"].values()), done["layout"]
        say(f"cached: {repo}@{commit} already in {dest} ({gb(size)}, {chosen} layout)")
        result(done["layout"], done["files"], True)
        sys.exit(0)

token_note = "" if os.environ.get("HF_TOKEN") else " (no HF_TOKEN set: gated repositories need one)"
api = HfApi(endpoint=endpoint)
try:
    info = api.model_info(repo, revision=revision, files_metadata=True)
except errors.GatedRepoError:
    fail(f"{repo} is gated and this token may not read it{token_note}",
         "accept the model license on huggingface.co with your account and pass HF_TOKEN")
except errors.RepositoryNotFoundError:
    fail(f"{repo} does not exist or is private{token_note}", "check the repository id, or pass HF_TOKEN")
except errors.RevisionNotFoundError:
    fail(f"{repo} has no revision {revision}", "use a branch, tag or commit that exists")
except errors.HfHubHTTPError as e:
    fail(f"the hub refused {repo}: {e}", "check HF_ENDPOINT and the network", 1)

shipped = {s.rfilename: (s.size or 0) for s in info.siblings or []}
chosen = None
for name, layout in layouts.items():
    files = {n: size for n, size in shipped.items() if wanted(n, layout)}
    if all(any(fnmatch.fnmatch(n, p) for n in files) for p in layout["require"]) and files:
        chosen = name
        break
    missing = [p for p in layout["require"] if not any(fnmatch.fnmatch(n, p) for n in files)]
    absent = ", ".join(missing) or "matching files"
    say(f"{repo} does not ship the {name} layout (no {absent})")
if chosen is None:
    listing = ", ".join(sorted(shipped)[:12]) + (" ..." if len(shipped) > 12 else "")
    tried = ", ".join(layouts)
    fail(f"{repo}@{revision} ships none of the layouts {tried} (it has: {listing or chr(45)})",
         "vLLM loads params.json + consolidated*.safetensors (Mistral format) or config.json + *.safetensors "
         "(Hugging Face format): check the repository id and the formats the catalog lists for it")
total = sum(files.values())
commit = info.sha or revision
say(f"{repo}@{commit[:12]}: {chosen} layout, {len(files)} files, {gb(total)} -> {dest}")

stop = threading.Event()


def progress():
    start = time.monotonic()
    while not stop.wait(10):
        got = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and ".git" not in p.parts)
        rate = got / max(time.monotonic() - start, 1e-3)
        say(f"{gb(min(got, total))} of {gb(total)} ({100 * min(got, total) / max(total, 1):.0f}%, {rate / 1e6:.0f} MB/s)")


dest.mkdir(parents=True, exist_ok=True)
ticker = threading.Thread(target=progress, daemon=True)
ticker.start()
t0 = time.monotonic()
try:
    snapshot_download(repo, revision=commit, local_dir=dest, allow_patterns=sorted(files), endpoint=endpoint,
                      max_workers=int(os.environ.get("HF_WORKERS", "8")))
except errors.HfHubHTTPError as e:
    fail(f"downloading {repo} failed: {e}", "retry: finished files are kept and skipped", 1)
finally:
    stop.set()
if not have(files):
    fail(f"{repo}: the files on disk do not match the sizes the hub announced", "retry the download", 1)
marker.write_text(json.dumps({"repo": repo, "revision": revision, "commit": commit, "layouts": layouts,
                              "layout": chosen, "files": files}, indent=1))
secs = time.monotonic() - t0
say(f"done: {gb(total)} in {secs:.0f} s ({total / max(secs, 1e-3) / 1e6:.0f} MB/s)")
result(chosen, files, False)
'

main() {
  [ -n "$PY" ] || die "PY is not set" "give the python that has huggingface_hub (the vLLM venv's)"
  [ -x "$PY" ] || die "$PY does not exist on this host" "install the engine first (its install step makes it)"
  { [ -n "$REPO" ] && [ -n "$DEST" ]; } || die "REPO and DEST must be set" "e.g. REPO=mistralai/Ministral-3-3B-Instruct-2512"
  [ -n "$LAYOUTS" ] || die "LAYOUTS is empty" "name the layouts to look for, e.g. LAYOUTS='mistral hf'"
  export REPO DEST REVISION LAYOUTS
  "$PY" -c "$DOWNLOAD_PY"
}

main "$@" </dev/null
