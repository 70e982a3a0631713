"""The shipped receipt image is what its generator makes from RECEIPT, and small."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

from mistral_lab import suites
from mistral_lab.assets.receipt import RECEIPT, make_receipt, receipt_lines, receipt_path


def test_the_shipped_receipt_is_what_the_generator_makes(tmp_path):
    shipped = receipt_path()
    assert shipped.is_file() and shipped.stat().st_size < 64_000
    fresh = make_receipt(tmp_path / "receipt.png")
    a = np.asarray(Image.open(shipped).convert("L"), dtype=np.int16)
    b = np.asarray(Image.open(fresh).convert("L"), dtype=np.int16)
    assert a.shape == b.shape
    # Glyph rasterising may differ by a shade between FreeType builds; the text may not.
    assert np.abs(a - b).mean() < 1.0
    assert (a < 128).mean() > 0.02, "there is dark text on the white paper"


def test_the_receipt_text_holds_every_fact_the_ocr_prompt_is_scored_on():
    text = "\n".join(receipt_lines())
    assert RECEIPT["merchant"] in text and RECEIPT["date"] in text and RECEIPT["bill_number"] in text
    for item in RECEIPT["items"]:
        assert item["name"] in text and f"{item['price']:.2f}" in text
    assert abs(sum(i["price"] for i in RECEIPT["items"]) - RECEIPT["total"]) < 1e-9
    assert f"{RECEIPT['total']:.2f} {RECEIPT['currency']}" in text
    ocr = next(p for p in suites.load("seeds").prompts if p.id == "ocr-receipt")
    assert ocr.image == receipt_path().name


def test_the_suite_and_the_image_ship_in_the_package():
    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mistral_lab"]
    package = root / "lib" / "mistral_lab"
    shipped = {p.relative_to(package) for g in globs for p in package.glob(g)}
    assert Path("suites/seeds.yaml") in shipped and Path("assets/receipt.png") in shipped
