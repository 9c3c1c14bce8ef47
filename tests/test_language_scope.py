"""Language scope of the checkers, on the cases of issue 16: Japanese rows are refused (or skipped and counted),
never judged by English rules; RPO pairs built from Spanish rows carry the right labels, checked against labels
written by hand (the build's own re-check reruns the same checker, so it cannot catch a wrong rule)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline.constraints import Constraint, UnsupportedLanguageError, check, constraints_from_ifeval_row, reverse
from data_pipeline.constraints.ifeval import build_checker
from data_pipeline.constraints.languages import checker_languages, judges, split_language_prefix
from rpo_jax.cli import main

# (IFEval id, response a Japanese reader would judge as following it, what IFEval's English rule says)
JAPANESE_CASES = [
    ("detectable_format:title", "『吾輩は猫である』について書きます。", False),  # a 『』 title, not <<...>>
    ("startend:quotation", "「猫はかわいい。」", False),  # 「」 quotes, not ASCII double quotes
    ("punctuation:no_comma", "はい、そうです。", True),  # "、" is a comma to a Japanese reader
]


@pytest.mark.parametrize(("type_", "response", "english_verdict"), JAPANESE_CASES)
def test_english_rules_misjudge_japanese_so_japanese_rows_are_refused(type_, response, english_verdict):
    assert check(Constraint.make(type_), response) == english_verdict  # why the row must not reach the checker
    assert not judges(type_, "ja") and judges(type_, "en")
    for row in (
        {"instruction_id_list": [f"ja:{type_}"], "kwargs": [{}]},
        {"language": "ja", "instruction_id_list": [type_], "kwargs": [{}]},
    ):
        with pytest.raises(UnsupportedLanguageError, match=r"rows\.jsonl:4: field 'instruction_id_list\[0\]'.*'ja'"):
            constraints_from_ifeval_row(row, "rows.jsonl", 4)


def test_sentence_counts_and_language_prefixes():
    # NLTK's English splitter does not end sentences at "。": three Japanese sentences count as one.
    three = Constraint.make("length_constraints:number_sentences", num_sentences=3, relation="at least")
    assert not check(three, "猫が好きです。犬も好きです。鳥も好きです。")
    assert checker_languages("length_constraints:number_sentences") == {"en"}
    assert split_language_prefix("es:detectable_content:postscript") == ("es", "detectable_content:postscript")
    assert split_language_prefix("count:word_count_range") == (None, "count:word_count_range")
    assert judges("detectable_format:json_format", "ja") and judges("rpo:has_comma", "es")
    with pytest.raises(Exception, match="disagrees with language"):
        constraints_from_ifeval_row(
            {"language": "fr", "instruction_id_list": ["es:punctuation:no_comma"], "kwargs": [{}]}, "x.jsonl", 1
        )


def test_postscript_marker_is_a_literal_whole_word_opening_a_line():
    # IFEval's own rule puts the marker into a regex unescaped: "p.d." matches "pedir", "nota" matches "notable".
    package_checker, _ = build_checker("detectable_content:postscript", {"postscript_marker": "P.D."})
    assert package_checker.check_following("Quiero pedir un café.")
    for marker, without, with_ps in (
        ("P.D.", "Quiero pedir un café.", "Quiero un café.\n\nP.D. Con leche."),
        ("Nota", "Es notable la ciudad.", "Es bonita la ciudad.\nNota: ve en mayo."),
    ):
        c = Constraint.make("detectable_content:postscript", postscript_marker=marker)
        assert not check(c, without) and check(reverse(c), without)
        assert check(c, with_ps) and not check(reverse(c), with_ps)
    # A postscript opens a line (markup before it allowed); the word in mid-sentence is not one.
    nota = Constraint.make("detectable_content:postscript", postscript_marker="Nota")
    assert not check(nota, "Tomé una nota importante.") and check(reverse(nota), "Tomé una nota importante.")
    assert check(nota, "Hola.\n**Nota:** ven pronto.")
    # IFEval's own markers keep IFEval's tolerant patterns.
    assert check(Constraint.make("detectable_content:postscript", postscript_marker="P.S."), "Hi.\np. s. bye")


def test_upper_case_spanish_is_not_english_capitals():
    capital = Constraint.make("change_case:english_capital")
    spanish = "LA CIUDAD DE MADRID ES LA CAPITAL DE ESPAÑA Y TIENE MUCHOS MUSEOS."
    package_checker, _ = build_checker("change_case:english_capital", {})
    assert package_checker.check_following(spanish)  # langdetect reads the upper-case text as English
    assert not check(capital, spanish) and check(reverse(capital), spanish)
    english = "THE CITY OF MADRID IS THE CAPITAL OF SPAIN AND HAS MANY MUSEUMS."
    assert check(capital, english) and not check(reverse(capital), english)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# Spanish rows (es: prefixes) and untagged rows whose responses are upper-case Spanish or English, with the labels a
# reader gives each response on each constraint, in the row's order.
SPANISH_ROWS = [
    {
        "key": "madrid",
        "prompt": "Escribe sobre Madrid. Termina con una posdata que empiece con P.D.",
        "instruction_id_list": ["es:detectable_content:postscript", "es:punctuation:no_comma"],
        "kwargs": [{"postscript_marker": "P.D."}, {}],
    },
    {
        "key": "barcelona",
        "prompt": "Describe Barcelona. Termina con una posdata que empiece con Nota",
        "instruction_id_list": ["es:detectable_content:postscript", "es:punctuation:no_comma"],
        "kwargs": [{"postscript_marker": "Nota"}, {}],
    },
    {
        "key": "capitals",
        "prompt": "Describe Madrid in English capital letters.",
        "instruction_id_list": ["change_case:english_capital", "punctuation:no_comma"],
        "kwargs": [{}, {}],
    },
]
RESPONSES = {
    "madrid": [
        ("Madrid es notable y quiero pedir un café en la Plaza Mayor.", [False, True]),
        ("Madrid es la capital de España.\n\nP.D. Visita el Prado.", [True, True]),
        ("Madrid, capital de España, es bonita.\nP.D. Ven pronto.", [True, False]),
        ("Pedir ayuda, es notable.", [False, False]),
    ],
    "barcelona": [
        ("Barcelona es notable por la Sagrada Familia.", [False, True]),
        ("Barcelona tiene playas y museos.\n\nNota: visita el barrio gótico.", [True, True]),
        ("Barcelona, bella y notable.\nNota: ve en primavera.", [True, False]),
        ("Es notable, sí.", [False, False]),
    ],
    "capitals": [
        ("LA CIUDAD DE MADRID ES LA CAPITAL DE ESPAÑA Y TIENE MUCHOS MUSEOS.", [False, True]),
        ("THE CITY OF MADRID IS THE CAPITAL OF SPAIN AND HAS MANY MUSEUMS.", [True, True]),
        ("MADRID, THE CAPITAL OF SPAIN, HAS MANY FAMOUS MUSEUMS AND PARKS.", [True, False]),
        ("Madrid, la capital, tiene museos.", [False, False]),
    ],
}


def test_rpo_pairs_from_spanish_rows_have_the_right_labels(tmp_path):
    instructions = _jsonl(tmp_path / "ins.jsonl", SPANISH_ROWS)
    responses = _jsonl(
        tmp_path / "resp.jsonl",
        [{"key": key, "response": text} for key, items in RESPONSES.items() for text, _ in items],
    )
    truth = {
        f"{key}#line{n}": labels
        for n, (key, labels) in enumerate(
            ((key, labels) for key, items in RESPONSES.items() for _, labels in items), start=1
        )
    }
    out = tmp_path / "out"
    args = ["build-pairs", "--recipe", "rpo", "--input", str(instructions), "--responses", str(responses)]
    assert main([*args, "--output", str(out), "--min-g", "1"]) == 0
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert {p["provenance"]["instruction_id"] for p in pairs} == {"madrid", "barcelona", "capitals"}
    for pair in pairs:
        provenance = pair["provenance"]
        chosen = truth[provenance["chosen"]["response_id"]]
        rejected = truth[provenance["rejected"]["response_id"]]
        listed = [(int(c["id"].split("~")[0][1:]), c["reversed"]) for c in provenance["prompt_constraints"]]
        # The chosen response follows every listed requirement (original or reversed) by the hand labels ...
        assert all(chosen[k] != reversed_ for k, reversed_ in listed), provenance
        # ... and the rejected one fails exactly g of them.
        assert sum(rejected[k] == reversed_ for k, reversed_ in listed) == pair["margin"], provenance


def test_build_pairs_refuses_or_skips_japanese_rows(tmp_path, capsys):
    rows = [
        {"key": f"ja{n}", "prompt": prompt, "instruction_id_list": [f"ja:{type_}"], "kwargs": [{}]}
        for n, (type_, prompt, _) in enumerate(JAPANESE_CASES)
    ]
    instructions = _jsonl(tmp_path / "ins.jsonl", rows)
    responses = _jsonl(
        tmp_path / "resp.jsonl", [{"key": f"ja{n}", "response": r} for n, (_, r, _) in enumerate(JAPANESE_CASES)]
    )
    args = ["build-pairs", "--recipe", "rpo", "--input", str(instructions), "--responses", str(responses)]
    assert main([*args, "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "ins.jsonl:1" in err and "'ja'" in err and "--skip-bad" in err
    # Skipped and counted; nothing is left, which is an error of its own naming that reason.
    assert main([*args, "--output", str(tmp_path / "b"), "--skip-bad"]) == 2
    assert "3 input row(s) were bad (unsupported_language" in capsys.readouterr().err
    assert main([*args, "--output", str(tmp_path / "c"), "--skip-bad", "--allow-empty"]) == 0
    stats = json.loads((tmp_path / "c" / "stats.json").read_text())
    assert stats["bad_input"]["by_reason"] == {"unsupported_language": 3}
