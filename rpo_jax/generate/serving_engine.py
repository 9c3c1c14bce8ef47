"""The model side of `rpo-jax serve`: prompts to token ids with their length bounded first, and batches of choices
decoded chunk by chunk on the batcher thread.

- Length before work: no token of the vocabulary spans more than `max_piece_chars` characters, so messages of C
  characters are at least C / max_piece_chars tokens (for tokenizers that do not shrink text when normalizing, as
  Llama's); a request that cannot fit is refused before the chat template and the tokenizer run. Then the templated
  prompt is tokenized and checked exactly: prompt + max_tokens <= the model's positions.
- Shapes: batch rows, prompt length and room for new tokens are each rounded up to a power of two (`ShapeBuckets`),
  so the compiled programs are a bounded set, listed at start-up; sampling settings are traced values.
- Decoding: `STEPS_PER_CHUNK` steps at a time on device. Between chunks each row's new text is checked for stop
  strings (`serving_text`: the row ends at the token completing one, later tokens are neither returned nor counted)
  and reported to streaming clients, and the rows of cancelled jobs are ended: marked done on device, they no longer
  keep the decode loop going and their tokens are dropped; the batch ends as soon as every row has ended. A freed
  row is not refilled mid-batch (shapes are fixed: until the batch ends it is computed alongside, like padding).
"""

from __future__ import annotations

import dataclasses
import threading

from rpo_jax.config.schema import MeshConfig
from rpo_jax.generate.serving_batcher import ChoiceDelta, ChoiceEnd, Job
from rpo_jax.generate.serving_protocol import ChatRequest, RequestError
from rpo_jax.generate.serving_text import ChoiceText

STEPS_PER_CHUNK = 8  # decode steps between looks from the host: stream granularity vs host round trips


def _powers_of_two(first: int, last: int) -> tuple[int, ...]:
    """first, 2 first, 4 first, ... up to the first one >= last."""
    values = [first]
    while values[-1] < last:
        values.append(values[-1] * 2)
    return tuple(values)


@dataclasses.dataclass(frozen=True)
class ShapeBuckets:
    """The shapes a batch is padded to: each a prefill and a decode program, compiled on first use."""

    rows: tuple[int, ...]
    prompt: tuple[int, ...]
    new_tokens: tuple[int, ...]

    @classmethod
    def for_model(cls, max_batch_size: int, batch_multiple: int, max_positions: int) -> ShapeBuckets:
        rows = {
            -(-min(r, max_batch_size) // batch_multiple) * batch_multiple for r in _powers_of_two(1, max_batch_size)
        }
        prompt = _powers_of_two(64, max_positions - 1)
        return cls(tuple(sorted(rows)), prompt, _powers_of_two(32, max_positions - 1))

    @staticmethod
    def pick(buckets: tuple[int, ...], needed: int) -> int:
        return next(b for b in buckets if b >= needed)

    def describe(self) -> str:
        count = len(self.rows) * len(self.prompt) * len(self.new_tokens)
        return (
            f"compiled shapes (each a prefill and a decode program, compiled on first use; at most {count}): "
            f"batch rows {self.rows} x prompt tokens {self.prompt} x new tokens {self.new_tokens}"
        )


class ChatEngine:
    """The loaded model, its tokenizer and its shapes; `run_batch` runs on the batcher thread only."""

    def __init__(self, settings, mesh_cfg: MeshConfig | None = None):
        import jax

        from rpo_jax.generate.generation import load_for_sampling

        self.loaded = load_for_sampling(
            settings.model, settings.tokenizer or settings.model, mesh_cfg, settings.use_lora
        )
        self.tokenizer = self.loaded.tokenizer
        self.max_positions = self.loaded.model_config.max_position_embeddings
        self.max_piece_chars = max(len(piece) for piece in self.tokenizer.get_vocab())
        self.buckets = ShapeBuckets.for_model(
            settings.max_batch_size, self.loaded.sampler.batch_multiple, self.max_positions
        )
        self.key = jax.random.key(settings.seed)
        self.batches = self.rows_cancelled = 0
        # Fast tokenizers may refuse concurrent use ("Already borrowed"): handlers tokenize, the batcher decodes.
        self._tokenizer_lock = threading.Lock()

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The templated prompt's token ids, or RequestError (400) if it cannot fit with max_tokens."""
        import jinja2

        if request.max_tokens >= self.max_positions:
            message = f"max_tokens {request.max_tokens} leaves no room for a prompt in the model's context"
            raise RequestError(400, f"{message} ({self.max_positions} positions)", "max_tokens")
        chars = sum(len(message["content"]) for message in request.messages)
        at_least = -(-chars // self.max_piece_chars)
        if at_least + request.max_tokens > self.max_positions:
            raise RequestError(
                400,
                f"the messages ({chars} characters) are at least {at_least} tokens: with max_tokens "
                f"{request.max_tokens} they exceed the model's context ({self.max_positions} positions)",
                "messages",
            )
        try:
            with self._tokenizer_lock:
                ids = self.tokenizer.apply_chat_template(
                    list(request.messages), add_generation_prompt=True, tokenize=True, return_dict=True
                )["input_ids"]
        except jinja2.TemplateError as err:
            raise RequestError(400, f"the model's chat template refuses these messages: {err}", "messages") from err
        if len(ids) + request.max_tokens > self.max_positions:
            raise RequestError(
                400,
                f"{len(ids)} prompt tokens + max_tokens {request.max_tokens} exceed the model's context "
                f"({self.max_positions} positions)",
                "max_tokens",
            )
        return list(ids)

    def _decode(self, tokens: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def run_batch(self, rows: list[tuple[Job, int]]) -> None:
        """Decodes one row per (job, choice index), reporting each choice's text and end to its job."""
        import jax

        from rpo_jax.generate.sampler import DecodeSpec

        requests = [job.request for job, _ in rows]
        extra = self.buckets.pick(self.buckets.rows, len(rows)) - len(rows)  # copies of row 0, one token each
        prompts = [job.prompt_ids for job, _ in rows] + [rows[0][0].prompt_ids] * extra
        limits = [r.max_tokens for r in requests]
        spec = DecodeSpec(
            self.buckets.pick(self.buckets.new_tokens, max(limits)), self.loaded.eos_ids, self.loaded.pad_id
        )
        sampler = self.loaded.sampler
        decoding = sampler.start(
            prompts,
            [r.temperature for r in requests] + [0.0] * extra,
            [r.top_p for r in requests] + [1.0] * extra,
            limits + [1] * extra,
            spec,
            self.buckets.pick(self.buckets.prompt, max(map(len, prompts))),
            jax.random.fold_in(self.key, self.batches),
        )
        self.batches += 1
        texts = [ChoiceText(self._decode, r.stop) for r in requests]
        while True:
            progress, ended = sampler.progress(decoding), []
            for row, ((job, index), text) in enumerate(zip(rows, texts)):
                if text.finished:
                    continue
                if job.cancelled.is_set():
                    text.cancel()
                    self.rows_cancelled += 1
                    ended.append(row)
                    continue
                stopped = bool(progress.done_B[row])
                delta = text.update(progress.tokens(row), stopped, bool(progress.eos_B[row]))
                if delta and job.request.stream:
                    job.report(ChoiceDelta(index, delta))
                if text.finished:
                    job.report(ChoiceEnd(index, text.text, text.finish_reason, text.tokens))
                    if not stopped:
                        ended.append(row)  # a stop string: the device would go on to its limit
            if all(text.finished for text in texts):
                return
            sampler.advance(decoding, STEPS_PER_CHUNK, ended)
