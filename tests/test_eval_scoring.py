"""The seed suite as data, and each scorer on good and bad answers written the way real models answer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml
from pydantic import ValidationError

from mistral_lab import suites
from mistral_lab.assets.receipt import RECEIPT
from mistral_lab.catalog import get_model, load_catalog
from mistral_lab.errors import BadInput
from mistral_lab.suites import scoring

SUITE = suites.load("seeds")
BY_ID = {p.id: p for p in SUITE.prompts}


def score(prompt_id: str, text: str) -> scoring.Score:
    p = BY_ID[prompt_id]
    assert p.check is not None
    return scoring.SCORERS[p.check.kind](text, p.check.expected, p.prompt)


# ---- the suite -----------------------------------------------------------------------------------------------


def test_the_suite_holds_every_seed_prompt_the_issue_names_each_with_its_source():
    categories = {p.id: p.category for p in SUITE.prompts}
    for wanted in ("classical-chinese", "sarcasm", "implied-meaning", "math-four-numbers", "math-zoo",
                   "ocr-receipt", "coding-agent", "json-calculator"):
        assert wanted in categories
    assert sum(1 for c in categories.values() if c == "document") == 5
    assert all(p.source.startswith("seed 00") for p in SUITE.prompts)
    # The seeds give answers for these; the Chinese-understanding prompts have none and are not scored.
    scored = {p.id for p in SUITE.prompts if p.check}
    assert {"math-four-numbers", "math-zoo", "train-duration", "ocr-receipt", "json-calculator"} <= scored
    assert not scored & {"classical-chinese", "sarcasm", "implied-meaning"}
    assert BY_ID["math-four-numbers"].check.expected == [3, 5, 6, 7]
    assert {k: v["value"] for k, v in BY_ID["math-zoo"].check.expected.items()} == {
        "buffalo": 23, "ostrich": 42, "snake": 10}
    assert BY_ID["ocr-receipt"].image == "receipt.png" and BY_ID["json-calculator"].tools == ["calculator"]


def test_the_document_holds_every_fact_its_questions_are_scored_on():
    doc = SUITE.documents["limo"].text
    for p in SUITE.prompts:
        if p.document == "limo":
            s = scoring.contains_all(doc, p.check.expected)
            assert s.passed, (p.id, s.detail)


def test_a_suite_file_with_a_mistake_is_refused_with_the_reason(tmp_path):
    data = yaml.safe_load(
        """
        id: mine
        description: x
        prompts:
          - {id: one, title: t, category: c, source: seed 004, prompt: hi, check: {kind: exact}}
        """)
    bad = tmp_path / "mine.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValidationError, match="unknown check kind 'exact'"):
        suites.load(bad)
    data["prompts"][0].update(check=None, document="paper")
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValidationError, match="names document 'paper'"):
        suites.load(bad)
    with pytest.raises(BadInput, match="unknown suite 'sedes'") as e:
        suites.load("sedes")
    assert e.value.field == "suite" and "seeds" in e.value.fix


def test_the_reply_budget_is_small_for_a_generated_model_and_roomy_otherwise():
    assert suites.default_max_tokens(SimpleNamespace(catalog=get_model("tiny-random"))) == suites.GENERATED_MAX_TOKENS
    assert suites.default_max_tokens(SimpleNamespace(catalog=None)) == suites.DEFAULT_MAX_TOKENS == 4096
    real = next(m for m in load_catalog().models if not m.generated)
    assert suites.default_max_tokens(SimpleNamespace(catalog=real)) == suites.DEFAULT_MAX_TOKENS


# ---- math ----------------------------------------------------------------------------------------------------


def test_four_numbers_good_answers():
    worked = ("设四个数为 a<b<c<d。最小的积 15 = a·b，最大的积 42 = c·d，……逐一验证六个积。\n"
              "所以这四个数分别是 **3、5、6、7**（3+5+6+7=21）。")
    assert score("math-four-numbers", worked).passed
    assert score("math-four-numbers", "The four numbers are 3, 5, 6 and 7.").passed
    assert score("math-four-numbers", "答案：$3, 5, 6, 7$").score == 1.0


def test_four_numbers_bad_answers():
    wrong = score("math-four-numbers", "所以这四个数是 3、5、7、6.5。")
    assert not wrong.passed and "6.5" in wrong.detail
    partial = score("math-four-numbers", "因此这四个数是 3、5 和 7。")
    assert not partial.passed and partial.score == pytest.approx(0.75)
    guesses = score("math-four-numbers", "答案可能是 1、2、3、4、5、6、7、8 中的四个。")
    assert not guesses.passed
    assert score("math-four-numbers", "我不知道。").score == 0.0


def test_zoo_good_answers():
    assert score("math-zoo", "设水牛 x 头……\n答：23头牛、42只鸵鸟和10条蛇。").passed
    assert score("math-zoo", "水牛：23\n鸵鸟：42\n蛇：10").passed
    assert score("math-zoo", "So there are 23 buffaloes, 42 ostriches and 10 snakes.").passed
    # Working that tries other values first: the last mention is the answer.
    assert score("math-zoo", "若水牛为 20 头则不成立……所以有 23 头水牛、42 只鸵鸟、10 条蛇。").passed


def test_zoo_bad_answers():
    s = score("math-zoo", "答：25头水牛、40只鸵鸟和10条蛇。")
    assert not s.passed and s.score == pytest.approx(1 / 3) and "buffalo 25 (expected 23)" in s.detail
    assert score("math-zoo", "动物一共 75 只。").score == 0.0


def test_train_duration():
    for good in ("旅程持续了 3 小时 32 分钟。", "3个小时32分", "It took 3 hours 32 minutes.", "共 212 分钟", "**3:32**"):
        assert score("train-duration", good).passed, good
    for bad in ("旅程持续了 3 小时 28 分钟。", "3.5 小时", "13:32 到达"):
        assert not score("train-duration", bad).passed, bad


# ---- instruction following, documents, agents ----------------------------------------------------------------

ALPHABET = ("A big cat danced elegantly, finding great happiness in joyful kittens leaping merrily near "
            "old purple quilts, resting softly to unwind very wearily, xenial yet zealous.")


def test_alphabet_sentence():
    assert score("alphabet-sentence", ALPHABET).passed
    short = score("alphabet-sentence", "A big cat danced. Everyone fled.")
    assert not short.passed and short.score == pytest.approx(4 / 26)
    skipped_letter = ALPHABET.replace("great", "very")
    s = score("alphabet-sentence", skipped_letter)
    assert not s.passed and "after 6 letters" in s.detail
    assert score("alphabet-sentence", "Zebras yawn.").score == 0.0


def test_document_answers():
    assert score("doc-limo-samples", "LIMO 仅使用了 817 个训练样本，在 AIME 上达到 57.1% 的准确率。").passed
    wrong = score("doc-limo-samples", "LIMO 使用了 8170 个样本，AIME 准确率 57%。")
    assert not wrong.passed and wrong.score == 0.0
    assert score("doc-limo-efficiency", "只用 1% 的数据；AIME 6.5%→57.1%，MATH 59.2%→94.8%。").passed
    half = score("doc-limo-efficiency", "只用了 1% 的数据，AIME 提升到 57.1%。")
    assert not half.passed and half.score == pytest.approx(2 / 5) and "6.5" in half.detail
    assert score("doc-limo-chain-quality",
                 "1. Optimal structural organization 2. cognitive scaffolding 3. rigorous verification").passed
    assert not score("doc-limo-chain-quality", "清晰的格式和详细的解释").passed
    assert score("doc-limo-levels", "质量越高性能越好：AIME24 上差约 15 个百分点，MATH500 上约 12 个。").passed
    assert not score("doc-limo-levels", "2015 年到 2012 年").passed, "numbers must stand alone"


def test_coding_agent_sections():
    good = ("## 摘要\n`average` 对空列表返回 0.0。\n## 已更改文件\n- stats.py\n## 运行的测试\n- pytest test_stats.py\n"
            "## 风险\n调用方可能依赖异常。")
    assert score("coding-agent", good).passed
    english = "**Summary:** guard\n**Files changed:** stats.py\n**Tests run:** pytest\n**Risks:** none"
    assert score("coding-agent", english).passed
    s = score("coding-agent", "## 摘要\n修复。\n## 已更改文件\nstats.py")
    assert not s.passed and s.score == 0.5 and "运行的测试" in s.detail and "风险" in s.detail
    # A word inside a sentence is not a section.
    assert not score("coding-agent", "我检查了文件，没有风险，也运行了测试。").passed


def test_json_calculator_answer():
    assert score("json-calculator", '{"total": 64.77}').passed
    assert score("json-calculator", '{"total": 64.7676}').passed
    fenced = score("json-calculator", 'Here it is:\n```json\n{"total": 64.77}\n```')
    assert not fenced.passed and fenced.score == 0.5 and "outside the JSON" in fenced.detail
    assert not score("json-calculator", '{"total": 59.97}').passed
    assert score("json-calculator", "The total is 64.77 dollars.").score == 0.0


# ---- OCR -----------------------------------------------------------------------------------------------------


def _receipt_reply(**changes: object) -> str:
    data = {"商家": RECEIPT["merchant"], "日期": "18/03/2025", "账单号": "4217",
            "项目明细": [{"名称": i["name"], "价格": f"{i['price']:.2f} €".replace(".", ",")} for i in RECEIPT["items"]],
            "总计": RECEIPT["total"]}
    data.update(changes)
    return json.dumps(data, ensure_ascii=False)


def test_receipt_good_answers():
    assert score("ocr-receipt", _receipt_reply()).passed
    # The seed's own format, {name_of_element: [value]}, with the items as keys and accents the image lacks.
    seed_style = {"bill number": ["004217"], "date": ["2025-03-18"], "merchant": ["Le Petit Bistro"],
                  "Croque monsieur": ["9.50"], "Salade niçoise": ["12.00"], "Café crème": ["6.40"],
                  "Tarte tatin": ["6.50"], "total": ["34.40 EUR"]}
    assert score("ocr-receipt", "```json\n" + json.dumps(seed_style, ensure_ascii=False) + "\n```").passed


def test_receipt_bad_answers():
    wrong_total = score("ocr-receipt", _receipt_reply(总计=43.40))
    assert not wrong_total.passed and "total" in wrong_total.detail
    assert wrong_total.score == pytest.approx(1 - 1 / 8)
    no_items = score("ocr-receipt", _receipt_reply(项目明细=[]))
    assert not no_items.passed and "Tarte tatin" in no_items.detail
    assert score("ocr-receipt", "商家是 LE PETIT BISTRO，总计 34.40 欧元。").score == 0.0
