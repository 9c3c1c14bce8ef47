"""M-IFEval's language-prefixed ids (issue 28): each is judged by the rule written for its language, on responses a
native reader labelled, never by IFEval's English rule where they differ; ids without a rule are refused by name
(eval, build-pairs), or skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline.constraints import UnsupportedLanguageError, constraints_from_ifeval_row
from data_pipeline.constraints.constraint import ifeval_row_entries
from data_pipeline.constraints.scoring import check_instruction
from rpo_jax.cli import main


def verdict(prefixed_id: str, response: str, **kwargs) -> bool:
    row = {"instruction_id_list": [prefixed_id], "kwargs": [kwargs]}
    _, [(instruction_id, resolved, _)] = ifeval_row_entries(row, "rows.jsonl", 1)
    return check_instruction(instruction_id, resolved, response, prompt=None)


# (prefixed id, kwargs, a response that follows it, one that does not, in the benchmark's language)
NATIVE_CASES = [
    ("fr:detectable_format:title", {}, "##Le petit prince##\nIl était une fois.", "<<Le petit prince>>\nIl était."),
    ("fr:startend:quotation", {}, "«Paris est magnifique au printemps.»", "Paris est magnifique au printemps."),
    ("fr:detectable_format:constrained_response", {}, "Peut-être. Cela dépend.", "My answer is maybe."),
    ("fr:special_character:ethel_or_cedilla", {"forbidden_char": "ç"}, "Le garcon mange.", "Le garçon mange."),
    ("fr:special_character:no_accents", {}, "Le chat dort sur le lit.", "Le chat est allé dormir."),
    ("fr:detectable_content:no_digits", {}, "Il a trois chats.", "Il a 3 chats."),
    ("es:detectable_format:number_bullet_lists", {"num_bullets": 2}, "* Uno\n* Dos", "- Uno\n- Dos"),
    ("es:startend:end_checker", {"end_phrase": "Un saludo"}, "Gracias por escribir. Un saludo.", "Un saludo y adiós."),
    ("es:punctuation:question_marks", {}, "Hola. ¿Qué tal estás?", "Hola. Qué tal estás?"),
    ("es:punctuation:exclamation_marks", {}, "¡Qué bonito día!", "Qué bonito día!"),
    ("es:detectable_format:constrained_response", {}, "Quizás. No lo sé.", "My answer is maybe."),
    ("ja:detectable_format:title", {}, "『吾輩は猫である』について書きます。", "<<吾輩は猫である>>について書きます。"),
    (
        "ja:detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "《重要》と《注意》です。",
        "*重要*と*注意*",
    ),
    (
        "ja:detectable_format:multiple_sections",
        {"section_spliter": "章", "num_sections": 2},
        "第1章\n猫の話。\n第２章\n犬の話。",
        "Section 1\n猫の話。\nSection 2\n犬の話。",
    ),
    ("ja:detectable_format:number_bullet_lists", {"num_bullets": 2}, "・りんご\n・みかん", "* りんご\n* みかん"),
    ("ja:startend:quotation", {}, "「猫はかわいい。」", '"猫はかわいい。"'),
    ("ja:punctuation:no_comma", {}, "はいそうです。Yes, indeed.", "はい、そうです。"),
    ("ja:punctuation:no_period", {}, "はいそうです", "はいそうです。"),
    ("ja:startend:end_checker", {"end_phrase": "以上です。"}, "「説明は以上です。」", "以上です。ありがとう。"),
    (
        "ja:combination:repeat_prompt",
        {"prompt_to_repeat": "猫を説明して"},
        "猫を説明して\n猫は動物です。",
        "猫は動物です。",
    ),
]


@pytest.mark.parametrize(("prefixed_id", "kwargs", "follows", "does_not"), NATIVE_CASES)
def test_each_language_rule_on_native_responses(prefixed_id, kwargs, follows, does_not):
    assert verdict(prefixed_id, follows, **kwargs)
    assert not verdict(prefixed_id, does_not, **kwargs)
    assert not verdict(prefixed_id, "   ", **kwargs)  # an empty response fails, as in M-IFEval


def test_english_markup_rule_would_misjudge_these():
    # What IFEval's rule says on the French and Japanese answers above: the reason prefixed ids never reach it.
    assert not check_instruction("detectable_format:title", {}, "##Le petit prince##\nIl était une fois.", None)
    assert not check_instruction(
        "detectable_format:number_bullet_lists", {"num_bullets": 2}, "・りんご\n・みかん", None
    )
    assert check_instruction("punctuation:no_comma", {}, "はい、そうです。", None)


def test_ids_sharing_ifevals_code_translate_their_relation_words():
    # M-IFEval's French and Japanese relations are IFEval's; Spanish "como máximo N" is "at most", i.e. < N + 1.
    assert verdict("fr:keywords:frequency", "Le chat, le chat.", keyword="chat", frequency=2, relation="au moins")
    assert not verdict("fr:keywords:frequency", "Le chat.", keyword="chat", frequency=2, relation="au moins")
    at_most_two = {"keyword": "sol", "frequency": 2, "relation": "como máximo"}
    assert verdict("es:keywords:frequency", "El sol y el sol.", **at_most_two)
    assert not verdict("es:keywords:frequency", "El sol, el sol y el sol.", **at_most_two)
    assert verdict(
        "es:detectable_content:number_placeholders", "[nombre] y [calle]", num_placeholders=2, relation="al menos"
    )
    assert verdict("ja:length_constraints:number_paragraphs", "猫。\n***\n犬。", num_paragraphs=2)
    with pytest.raises(Exception, match=r"kwargs\[0\]\.relation.*'au moins'"):
        verdict("fr:keywords:frequency", "Le chat.", keyword="chat", frequency=2, relation="at least")
    with pytest.raises(Exception, match="always counts 'al menos'"):
        verdict("es:detectable_format:multiple_sections", "x", section_spliter="Sección", num_sections=2, relation="x")


@pytest.mark.parametrize(
    "prefixed_id", ["ja:letters:furigana", "fr:length_constraints:number_words", "de:punctuation:no_comma"]
)
def test_ids_without_a_rule_for_their_language_are_refused(prefixed_id):
    with pytest.raises(UnsupportedLanguageError, match=f"{prefixed_id}: no rule"):
        constraints_from_ifeval_row({"instruction_id_list": [prefixed_id], "kwargs": [{}]}, "rows.jsonl", 1)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_judges_by_language_and_names_every_refused_id(tmp_path, capsys):
    rows = [
        {"key": 1, "prompt": "Un titre.", "instruction_id_list": ["fr:detectable_format:title"], "kwargs": [{}]},
        {"key": 2, "prompt": "題名を。", "instruction_id_list": ["ja:detectable_format:title"], "kwargs": [{}]},
        {"key": 3, "prompt": "ふりがな。", "instruction_id_list": ["ja:letters:furigana"], "kwargs": [{}]},
        {"key": 4, "prompt": "Mots.", "instruction_id_list": ["fr:length_constraints:number_words"], "kwargs": [{}]},
    ]
    prompts = _jsonl(tmp_path / "m.jsonl", rows)
    answers = ["##Titre##\nTexte.", "『題名』です。", "猫(ねこ)", "Bonjour."]
    responses = _jsonl(tmp_path / "r.jsonl", [{"prompt": r["prompt"], "response": a} for r, a in zip(rows, answers)])
    argv = ["eval", "--prompts", str(prompts), "--responses", str(responses)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "fr:length_constraints:number_words, ja:letters:furigana: no rule" in err and "--skip-bad" in err
    per_prompt, out = tmp_path / "v.jsonl", tmp_path / "o.json"
    assert main([*argv, "--skip-bad", "--per-prompt", str(per_prompt), "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["prompts_skipped_bad_by_reason"] == {"unsupported_language": 2}
    assert results["num_responses_without_prompt"] == 0 and results["num_responses_skipped"] == 2
    verdicts = [json.loads(line) for line in per_prompt.read_text().splitlines()]
    assert [(v["language"], v["prompt_strict"]) for v in verdicts] == [("fr", True), ("ja", True)]


def test_build_pairs_never_labels_with_a_rule_it_cannot_reverse(tmp_path, capsys):
    rows = [{"key": "t", "prompt": "Un titre.", "instruction_id_list": ["fr:detectable_format:title"], "kwargs": [{}]}]
    instructions = _jsonl(tmp_path / "ins.jsonl", rows)
    responses = _jsonl(tmp_path / "resp.jsonl", [{"key": "t", "response": r} for r in ("##A##\nx", "<<A>>\nx")])
    args = ["build-pairs", "--recipe", "rpo", "--input", str(instructions), "--responses", str(responses)]
    assert main([*args, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "fr:detectable_format:title" in err and "'fr'" in err
    # An id whose French rule is IFEval's code is reversed as IFEval's.
    same = [{"key": "c", "prompt": "Sans virgule.", "instruction_id_list": ["fr:punctuation:no_comma"], "kwargs": [{}]}]
    _jsonl(instructions, same)
    _jsonl(responses, [{"key": "c", "response": r} for r in ("Oui merci.", "Oui, merci.")])
    assert main([*args, "--output", str(tmp_path / "ok"), "--min-g", "1"]) == 0
    pairs = [json.loads(line) for line in (tmp_path / "ok" / "pairs.jsonl").read_text().splitlines()]
    for pair in pairs:  # the chosen response follows the requirement as listed: no comma, or (reversed) a comma
        reversed_ = pair["provenance"]["prompt_constraints"][0]["reversed"]
        assert pair["sequences"][0]["response"] == ("Oui, merci." if reversed_ else "Oui merci.")
    assert len(pairs) == 2
