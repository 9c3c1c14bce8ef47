"""IFBench's checkers (AllenAI's 58 OOD instruction ids) from the registry package `if-verifiable`
(`if_verifiable.ifbench`), set up for offline, repeatable use.

Like IFEval's, the checkers read NLTK's punkt_tab model from `data_pipeline/assets/nltk_data`; the package's
import-time `nltk.download` calls are refused (`ifeval.offline_nltk`), so nothing is downloaded. Two checkers
need NLTK data the repo does not ship, because nltk_data states no licence for it (see `NLTK_DATA_NEEDED`);
they are reported as unsupported rather than run, because NLTK would otherwise look for that data wherever the
machine happens to have it and a verdict would depend on the machine.

Every named parameter of a checker must be given: upstream's `build_description` silently draws a random value
for a missing one, and a random constraint cannot be scored repeatably.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping

from data_pipeline.constraints.ifeval import NLTK_DATA_DIR, checker_verdict, make_checker, offline_nltk
from data_pipeline.constraints.params import ConstraintError, where

# IFBench id -> the NLTK data package its checker loads (path under an NLTK data directory).
NLTK_DATA_NEEDED = {
    "ratio:stop_words": "corpora/stopwords",  # nltk.corpus.stopwords.words("english")
    "words:start_verb": "taggers/averaged_perceptron_tagger_eng",  # nltk.pos_tag
}


@functools.cache
def ifbench_registry() -> Mapping[str, type]:
    """IFBench instruction id -> checker class (the 58 ids of IFBench_test)."""
    with offline_nltk():
        from if_verifiable.ifbench import instructions_registry
    return instructions_registry.INSTRUCTION_DICT


def unsupported_reason(instruction_id: str) -> str | None:
    """Why `instruction_id` cannot be checked here, or None when it can."""
    resource = NLTK_DATA_NEEDED.get(instruction_id)
    if resource is None or (NLTK_DATA_DIR / resource).exists():
        return None
    return f"needs NLTK's '{resource}' data, which is not shipped in {NLTK_DATA_DIR}"


def _named_parameters(checker_class: type) -> list[str]:
    signature = inspect.signature(checker_class.build_description)
    return [
        name
        for name, parameter in signature.parameters.items()
        if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]


def validate_ifbench_entry(
    instruction_id: str, kwargs: Mapping[str, object], source: str, line: int, index: int
) -> None:
    """Reject unknown or missing parameters of an IFBench id, and values its checker cannot be built from."""
    registry = ifbench_registry()
    # `prompt` comes from the row itself (see make_checker), never from kwargs.
    expected = [name for name in _named_parameters(registry[instruction_id]) if name != "prompt"]
    for name in kwargs:
        if name not in expected:
            raise ConstraintError(
                f"{where(source, line, f'kwargs[{index}].{name}')}: not a parameter of "
                f"{instruction_id} (parameters: {expected or 'none'})"
            )
    for name in expected:
        if name not in kwargs:
            raise ConstraintError(
                f"{where(source, line, f'kwargs[{index}].{name}')}: missing (IFBench would draw a random value)"
            )
    if unsupported_reason(instruction_id) is None:
        try:
            make_checker(registry[instruction_id], instruction_id, kwargs, prompt="")
        except Exception as err:  # the checker's own validation: any failure means these kwargs are unusable
            raise ConstraintError(
                f"{where(source, line, f'kwargs[{index}]')}: {instruction_id} rejects "
                f"{dict(kwargs)!r}: {type(err).__name__}: {err}"
            ) from err


def ifbench_check(instruction_id: str, kwargs: Mapping[str, object], response: str, prompt: str | None = None) -> bool:
    """IFBench's strict verdict on one response (kwargs validated by `validate_ifbench_entry`)."""
    reason = unsupported_reason(instruction_id)
    if reason is not None:
        raise ConstraintError(f"{instruction_id} cannot be checked: {reason}")
    checker, _ = make_checker(ifbench_registry()[instruction_id], instruction_id, kwargs, prompt)
    return checker_verdict(checker, response)
