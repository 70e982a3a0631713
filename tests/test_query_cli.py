"""The client by deployment name, `mistral-lab ask`, `mistral-lab eval` and notebooks/query.ipynb through papermill,
against tiny-random deployed on this machine with mistral_lab.deploy (the real llama.cpp build, the real service),
as tests/test_deploy.py does; and the notebook against a bare URL with the key in the environment."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import papermill as pm
import pytest

import mistral_lab as ml
from mistral_lab import state, suites
from mistral_lab.assets.receipt import receipt_path
from mistral_lab.cli import main
from mistral_lab.client import Client, assemble
from mistral_lab.errors import BadInput
from mistral_lab.planning import PlanRequest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
NAME = "query-cli"
# Closed choices and bounded numbers: the random model's reply then always fits the grammar within max_tokens.
CITY_SCHEMA = {
    "title": "city",
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]},
        "population": {"type": "integer", "minimum": 0, "maximum": 100_000_000},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "population", "capital"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def deployment(llamacpp_bin, tmp_path_factory) -> Iterator[state.Deployment]:
    """tiny-random up on the local target under its own records folder, torn down after the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MISTRAL_LAB_HOME", str(tmp_path_factory.mktemp("query-home")))
        dep = ml.deploy(PlanRequest(model="tiny-random", target="local", name=NAME), say=lambda _line: None)
        try:
            yield dep
        finally:
            ml.teardown(NAME, say=lambda _line: None)


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """`mistral-lab ARGV` in this process: exit code, standard output, standard error (its line wrapping undone)."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def test_the_client_by_deployment_name(deployment):
    with Client.from_deployment(NAME) as c:
        assert (c.model, c.engine, c.catalog.id, c.variant) == ("tiny-random", "llamacpp", "tiny-random", "random")
        whole = c.chat("Tell me a story", max_tokens=12, temperature=0, seed=5)
        assert whole.usage["completion_tokens"] == 12 and whole.finish_reason == "length"
        streamed = assemble(c.stream("Tell me a story", max_tokens=12, temperature=0, seed=5))
        assert (streamed.content, streamed.usage) == (whole.content, whole.usage)
        with pytest.raises(BadInput, match="tiny-random has no vision encoder"):
            c.chat("Read this receipt", image=receipt_path())


def test_ask_streams_or_waits_and_keeps_the_key_out(deployment, capsys):
    code, out, err = _run(capsys, ["ask", NAME, "Say hello", "--max-tokens", "8", "--temperature", "0"])
    assert code == 0 and out.strip()
    code, whole, _ = _run(capsys, ["ask", NAME, "Say hello", "--max-tokens", "8", "--temperature", "0",
                                   "--no-stream", "--system", "Be brief."])
    assert code == 0 and whole.strip()
    code, same, _ = _run(capsys, ["ask", NAME, "Say hello", "--max-tokens", "8", "--temperature", "0",
                                  "--system", "Be brief."])
    assert same == whole, "streamed or not, the same request prints the same answer"
    assert state.read_secret(NAME, "api_key") not in out + err + whole


def test_ask_with_a_json_schema_prints_the_validated_object_alone(deployment, capsys, tmp_path):
    schema_file = tmp_path / "city.json"
    schema_file.write_text(json.dumps(CITY_SCHEMA))
    for _ in range(3):
        code, out, err = _run(capsys, ["ask", NAME, "Describe Paris as JSON", "--json-schema", str(schema_file),
                                       "--max-tokens", "100"])
        assert code == 0, err
        (line,) = out.splitlines()
        jsonschema.validate(json.loads(line), CITY_SCHEMA)


def test_ask_refuses_what_the_model_cannot_do_with_the_fix(deployment, capsys, tmp_path):
    code, out, err = _run(capsys, ["ask", NAME, "Read this", "--image", str(receipt_path())])
    assert code == 2 and out == "" and "image: tiny-random has no vision encoder" in err and "fix:" in err
    code, _, err = _run(capsys, ["ask", NAME, "Think", "--reasoning", "high"])
    assert code == 2 and "reasoning_effort" in err and "no reasoning-effort switch" in err
    bad = tmp_path / "schema.json"
    bad.write_text("{not json")
    code, _, err = _run(capsys, ["ask", NAME, "x", "--json-schema", str(bad)])
    assert code == 2 and "--json-schema" in err and "is not JSON" in err and "fix:" in err
    bad.write_text(json.dumps({"type": "objekt"}))
    code, _, err = _run(capsys, ["ask", NAME, "x", "--json-schema", str(bad)])
    assert code == 2 and "is not a valid JSON schema" in err
    code, _, err = _run(capsys, ["ask", "query-clj", "hello"])
    assert code == 2 and "unknown deployment 'query-clj'" in err and f"did you mean {NAME}" in err


def test_eval_runs_the_seed_suite_and_writes_a_row_per_prompt(deployment, capsys, tmp_path):
    out_file = tmp_path / "eval.json"
    code, out, err = _run(capsys, ["eval", NAME, "--suite", "seeds", "--max-tokens", "16", "--out", str(out_file)])
    assert code == 0, err
    suite = suites.load("seeds")
    result = json.loads(out_file.read_text())
    assert (result["suite"], result["model"], result["engine"]) == ("seeds", "tiny-random", "llamacpp")
    rows = {r["id"]: r for r in result["rows"]}
    assert list(rows) == [p.id for p in suite.prompts]
    for p in suite.prompts:
        row = rows[p.id]
        assert row["scored"] == (p.check is not None) and row["source"] == p.source
        if p.check is None:
            assert row["score"] is None and row["status"] == "ok" and row["completion_tokens"] >= 1
        else:
            assert 0.0 <= row["score"] <= 1.0 and isinstance(row["passed"], bool) and row["detail"]
    # tiny-random has no vision and no reasoning switch: the OCR row is skipped (0), no row asks for effort.
    assert rows["ocr-receipt"]["status"] == "skipped" and rows["ocr-receipt"]["score"] == 0.0
    assert all("reasoning_effort" not in r["settings"] for r in rows.values())
    assert rows["json-calculator"]["settings"]["tools"] == ["calculator"]
    assert rows["doc-limo-samples"]["prompt_tokens"] > 1000, "the document went with the question"
    summary = result["summary"]
    assert summary["prompts"] == len(suite.prompts) and summary["scored"] == sum(1 for p in suite.prompts if p.check)
    # The table: a line per prompt, then where the JSON went.
    for p in suite.prompts:
        assert p.id in out
    assert f"wrote {out_file}" in out.replace("\n", "")
    assert state.read_secret(NAME, "api_key") not in out + err + out_file.read_text()


def test_eval_refuses_an_unknown_suite_or_prompt(deployment, capsys):
    code, _, err = _run(capsys, ["eval", NAME, "--suite", "sedes"])
    assert code == 2 and "unknown suite 'sedes'" in err and "seeds" in err
    code, _, err = _run(capsys, ["eval", NAME, "--only", "math-zoo,nope", "--out", str(Path("/dev/null"))])
    assert code == 2 and "no prompt ['nope']" in err


def _outputs(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    return "\n".join("".join(o.get("text", "")) + json.dumps(o.get("data", {}), ensure_ascii=False)
                     for cell in nb["cells"] for o in cell.get("outputs", []))


def test_the_query_notebook_on_a_named_deployment_leaves_it_up(deployment, tmp_path):
    out = tmp_path / "query.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks/query.ipynb"), str(out), cwd=str(ROOT / "notebooks"),
                        progress_bar=False, parameters={"deployment": NAME})
    text = _outputs(out)
    assert "tiny-random on llamacpp" in text and "tiny-random has no vision encoder" in text
    assert "City(city=" in text and "seeds on tiny-random" in text
    saved = Path(re.search(r"saved: (\S+\.json)", text).group(1))
    assert len(json.loads(saved.read_text())["rows"]) == len(suites.load("seeds").prompts)
    # Found up, so left up; and its key appears nowhere in what the notebook shows or stores.
    assert state.load(NAME).status == "up"
    assert state.read_secret(NAME, "api_key") not in out.read_text()


def test_the_query_notebook_on_a_bare_url_reads_the_key_from_the_environment(llama_server, tmp_path, monkeypatch):
    monkeypatch.setenv("QUERY_NB_KEY", llama_server.api_key)
    out = tmp_path / "query-url.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks/query.ipynb"), str(out), cwd=str(ROOT / "notebooks"),
                        progress_bar=False, parameters={"base_url": llama_server.v1, "key_env": "QUERY_NB_KEY",
                                                        "model": "tiny-random"})
    text = out.read_text()
    assert "tiny-random on llamacpp at " + llama_server.v1 in _outputs(out)
    assert llama_server.api_key not in text, "the key is neither a parameter nor an output"
