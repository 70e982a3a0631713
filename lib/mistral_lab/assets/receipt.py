"""Files the library ships for the query examples, made by code in this package so anyone can regenerate them.

`receipt.png` is a restaurant bill for the seeds' OCR-to-JSON prompt. Its text is `RECEIPT` below, so a reply can
be scored against what the image really says (see `mistral_lab.suites.scoring.receipt_json`). Regenerate with
`python -m mistral_lab.assets.receipt` after changing `RECEIPT`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mistral_lab import assets

RECEIPT: dict[str, Any] = {
    "merchant": "LE PETIT BISTRO",
    "address": "12 Rue de la Paix, 75002 Paris",
    "date": "2025-03-18",
    "time": "12:47",
    "bill_number": "004217",
    "items": [
        {"name": "Croque monsieur", "quantity": 1, "price": 9.50},
        {"name": "Salade nicoise", "quantity": 1, "price": 12.00},
        {"name": "Cafe creme", "quantity": 2, "price": 6.40},
        {"name": "Tarte tatin", "quantity": 1, "price": 6.50},
    ],
    "total": 34.40,
    "currency": "EUR",
}


def receipt_path() -> Path:
    """The shipped receipt image."""
    return assets.path("receipt.png")


def receipt_lines(receipt: dict[str, Any] = RECEIPT) -> list[str]:
    width = 32
    lines = [receipt["merchant"].center(width), receipt["address"].center(width), ""]
    lines.append(f"Date {receipt['date']}   {receipt['time']}")
    lines.append(f"Bill No. {receipt['bill_number']}")
    lines.append("-" * width)
    for item in receipt["items"]:
        left = f"{item['quantity']} x {item['name']}"
        right = f"{item['price']:.2f}"
        lines.append(left + right.rjust(width - len(left)))
    lines.append("-" * width)
    total = f"{receipt['total']:.2f} {receipt['currency']}"
    lines.append("TOTAL" + total.rjust(width - 5))
    lines += ["", "Merci de votre visite !".center(width)]
    return [line.ljust(width) for line in lines]


def make_receipt(path: str | Path, receipt: dict[str, Any] = RECEIPT, dpi: int = 100) -> Path:
    """Render the receipt as a small black-on-white PNG in matplotlib's bundled monospace font."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    lines = receipt_lines(receipt)
    fig = Figure(figsize=(3.6, 0.22 * len(lines) + 0.4), dpi=dpi, facecolor="white")
    fig.text(0.5, 0.5, "\n".join(lines), family="DejaVu Sans Mono", size=10, ha="center", va="center",
             multialignment="left", linespacing=1.35, color="black")
    out = Path(path)
    # No Software/date metadata: the same inputs give the same file.
    fig.savefig(out, format="png", dpi=dpi, metadata={"Software": None})
    return out


if __name__ == "__main__":
    print(make_receipt(receipt_path()))
