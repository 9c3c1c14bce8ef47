"""Deterministic edits of a response (truncated, comma-stripped, re-cased, quoted, with a P.S.).

Applied to reference responses (e.g. Google's GPT-4 IFEval answers) they give each prompt several responses that
differ on several machine-checkable constraints at once, which is what the RPO recipe needs to form pairs with
g > 0 when a model's own samples agree too often.
"""

from __future__ import annotations


def response_edits(text: str) -> dict[str, str]:
    """name -> edited response (`orig` is the text itself)."""
    words = text.split()
    quarter = " ".join(words[: max(1, len(words) // 4)])
    no_comma = text.replace(",", "")
    return {
        "orig": text,
        "trunc": quarter,
        "nocomma": no_comma,
        "upper": text.upper(),
        "lower": text.lower(),
        "quoted_nocomma": f'"{no_comma}"',
        "ps": text + "\n\nP.S. Thanks for reading, friend.",
        "trunc_upper_ps": quarter.upper() + "\n\nP.S. BYE",
    }
