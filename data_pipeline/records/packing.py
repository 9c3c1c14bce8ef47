"""Packing preference groups into rows of a fixed length (`data.packing`): the plan and the row layout.

Units: one example (a DPO/RPO pair, an IOPO quadruple), or an example and its mirror when `group_mirrors` (RPO), so
they share a row and hence a step. A unit is never split across rows. The plan is a deterministic
first-fit-decreasing bin packing of the units' packed lengths into rows of `capacity` tokens: units by length,
longest first (ties by unit index), each into the first row with room.

Row layout, per example in a row (its slot j, sequences g = 0..G-1, global sequence slot s = j·G + g):
- `packed`: each sequence's row (prompt + response) as its own segment: positions 0..n-1, attention within it.
- `packed_shared_prompt`: the sequences of the example with identical prompt tokens share one copy of the prompt
  except its last token: the *prefix* segment `prompt[:-1]`, then one *branch* per response, `[prompt[-1],
  response...]`, positions continuing from the prefix end as in the unpacked row. A branch token attends to its
  prefix and causally to its own branch, never to a sibling branch. Repeating the prompt's last token in every
  branch gives each branch the hidden state that predicts its first response token, so next-token scoring
  (position t predicts t+1) stays exactly that of the unpacked row.

Per-token arrays `[L]`: tokens, loss_mask (the scored response tokens, as unpacked), segment_ids (unique per
segment within the row, 1.., 0 = padding), prefix_ids (the segment a token may see besides its own: its branch's
prefix; its own id otherwise), positions, sequence_ids (slot s of the sequence the token belongs to, -1 for shared
prefixes and padding). Per-slot arrays `[J]`: margin, example_index (-1 empty), example_weight (1 real, 0 empty);
`[J, G]`: scored_tokens (each sequence's scored response tokens; 0 in empty slots).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PACKING_MODES = ("none", "packed", "packed_shared_prompt")


def _prompt_groups(record: dict) -> list[list[int]]:
    """The example's sequences grouped by identical prompt tokens, in order of first appearance."""
    groups: dict[bytes, list[int]] = {}
    for g, (row, start) in enumerate(zip(record["rows"], record["response_starts"], strict=True)):
        groups.setdefault(np.asarray(row[:start], dtype="<i4").tobytes(), []).append(g)
    return list(groups.values())


def packed_length(record: dict, shared_prompt: bool) -> int:
    """Tokens the example takes in a packed row (`record` as `pair_example.ShardRecords` gives it)."""
    lengths = [len(row) for row in record["rows"]]
    if not shared_prompt:
        return sum(lengths)
    starts = record["response_starts"]
    # Each prompt group: one prefix of start-1 tokens, then per member its prompt's last token + its response.
    groups = _prompt_groups(record)
    return sum(int(starts[gs[0]]) - 1 + sum(lengths[g] - int(starts[g]) + 1 for g in gs) for gs in groups)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of unit indices: longest unit first (ties by index), each into the first row with room.

    A max-segment tree over the rows' free space finds the first row with room in O(log rows)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and lengths.max() > capacity:
        raise ValueError(f"a unit of {int(lengths.max())} tokens does not fit rows of {capacity}")
    order = np.argsort(-lengths, kind="stable")
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    free = np.full(2 * size, capacity, dtype=np.int64)  # leaves size.. are rows (all empty rows have `capacity`)
    rows: list[list[int]] = []
    for unit in order.tolist():
        need, node = int(lengths[unit]), 1
        while node < size:  # descend to the leftmost leaf with free >= need (the root always has room: need <= cap)
            node = 2 * node if free[2 * node] >= need else 2 * node + 1
        row = node - size
        if row == len(rows):
            rows.append([])
        rows[row].append(unit)
        free[node] -= need
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return rows


def plan_rows(unit_examples: Sequence[Sequence[int]], example_lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Rows of example indices (each unit's examples kept together, in unit order) for units of examples."""
    unit_lengths = [int(sum(example_lengths[e] for e in unit)) for unit in unit_examples]
    return [[e for u in row for e in unit_examples[u]] for row in first_fit_decreasing(unit_lengths, capacity)]


def packing_efficiency(example_lengths: Sequence[int], num_rows: int, capacity: int) -> float:
    """Real tokens / row positions."""
    return float(np.sum(example_lengths)) / (num_rows * capacity) if num_rows else 0.0


def packed_row_length(max_length: int, group_size: int) -> int:
    """A packed row holds the positions of one padded group, G × max_length: every group the tokenizer keeps fits,
    and `data.global_batch_size` (rows per step) keeps its token budget."""
    return max_length * group_size


def efficiency_summary(
    num_sequences: int, sequence_tokens: int, lengths: dict[str, Sequence[int]], max_length: int, group_size: int
) -> dict[str, dict]:
    """Per `data.packing` mode (one example per unit): `none` = one sequence per padded row of `max_length`, packed
    modes = rows of `packed_row_length` tokens; from each example's packed length per mode (`lengths[mode]`):
    rows, `fill` (share of row positions holding a token) and `sequence_tokens_per_position` (tokens of the
    unpacked sequences per row position; above `fill` when shared prompts are stored once). The manifest records it."""
    fill = packing_efficiency([sequence_tokens], num_sequences, max_length)
    capacity = packed_row_length(max_length, group_size)
    out = {"none": {"rows": num_sequences, "fill": fill, "sequence_tokens_per_position": fill}}
    for mode in ("packed", "packed_shared_prompt"):
        num_rows = len(first_fit_decreasing(lengths[mode], capacity)) if len(lengths[mode]) else 0
        out[mode] = {
            "rows": num_rows,
            "fill": packing_efficiency(lengths[mode], num_rows, capacity),
            "sequence_tokens_per_position": packing_efficiency([sequence_tokens], num_rows, capacity),
        }
    return {mode: {k: round(v, 4) for k, v in stats.items()} for mode, stats in out.items()}


def layout_row(records: Sequence[dict], capacity: int, slots: int, pad_token_id: int, shared_prompt: bool) -> dict:
    """One packed row of `records` (decoded, each with a `weight`): the per-token and per-slot arrays (module doc)."""
    tok = np.full(capacity, pad_token_id, np.int32)
    loss_mask = np.zeros(capacity, bool)
    seg, prefix, pos = (np.zeros(capacity, np.int32) for _ in range(3))
    seq = np.full(capacity, -1, np.int32)
    margin, example_index = np.zeros(slots, np.int32), np.full(slots, -1, np.int64)
    weight = np.zeros(slots, np.float32)
    group = len(records[0]["rows"]) if records else 2
    scored = np.zeros((slots, group), np.int32)
    cursor, next_id = 0, 1

    def place(tokens, first_position, prefix_id, sequence, scored_from):
        nonlocal cursor, next_id
        n, at = len(tokens), slice(cursor, cursor + len(tokens))
        if cursor + n > capacity:
            raise ValueError(f"packed row overflows {capacity} tokens")
        tok[at], seg[at], pos[at] = tokens, next_id, np.arange(first_position, first_position + n)
        prefix[at], seq[at] = prefix_id or next_id, sequence
        loss_mask[cursor + scored_from : cursor + n] = sequence >= 0
        cursor, next_id = cursor + n, next_id + 1
        return next_id - 1

    if len(records) > slots:
        raise ValueError(f"{len(records)} examples in a row of {slots} slots")
    for j, rec in enumerate(records):
        group = len(rec["rows"])
        margin[j], example_index[j], weight[j] = rec["margin"], rec["example_index"], rec["weight"]
        rows, starts = rec["rows"], [int(s) for s in rec["response_starts"]]
        scored[j] = [len(row) - start for row, start in zip(rows, starts, strict=True)]
        if not shared_prompt:
            for g in range(group):
                place(rows[g], 0, 0, j * group + g, starts[g])
            continue
        for gs in _prompt_groups(rec):
            start = starts[gs[0]]
            prefix_id = place(rows[gs[0]][: start - 1], 0, 0, -1, start) if start > 1 else 0
            for g in gs:  # the branch: prompt[-1] (not scored) then the response (scored)
                place(rows[g][start - 1 :], start - 1, prefix_id, j * group + g, 1)
    return {
        "tokens": tok,
        "loss_mask": loss_mask,
        "segment_ids": seg,
        "prefix_ids": prefix,
        "positions": pos,
        "sequence_ids": seq,
        "margin": margin,
        "example_index": example_index,
        "example_weight": weight,
        "scored_tokens": scored,
    }
