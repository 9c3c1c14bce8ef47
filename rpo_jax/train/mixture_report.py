"""What a run on a mixture (`data.sources`) trained on: per source, its weight and the share of the examples (or
packed rows) of the steps done, written to `<output_dir>/mixture.json` and summed up in the closing summary."""

from __future__ import annotations

import json

from data_pipeline.files import write_bytes_atomic
from data_pipeline.storage import storage_path
from rpo_jax.config.schema import Config

MIXTURE_REPORT = "mixture.json"


def report_mixture(loader, steps_done: int | None, cfg: Config, output_dir, *, is_main: bool) -> dict | None:
    """The realised proportions over `steps_done` steps (None when the run reads no mixture); process 0 writes
    them to `<output_dir>/mixture.json`. Exact, not sampled: the mixed stream is a deterministic function of the
    seed, and the checkpoint restores its position (`data_pipeline.records.mixture`)."""
    mixture = getattr(loader, "mixture", None)
    if mixture is None:
        return None
    positions = (steps_done or 0) * cfg.data.global_batch_size  # examples, or packed rows, per step
    report = {
        "unit": loader.mixture_unit,
        "steps": steps_done or 0,
        "positions": positions,
        "fingerprint": mixture.fingerprint(),
        "sources": mixture.realised(positions, loader.mixture_unit),
    }
    if is_main:
        text = json.dumps(report, indent=1) + "\n"
        write_bytes_atomic(storage_path(output_dir) / MIXTURE_REPORT, text.encode())
    return report


def mixture_lines(report: dict | None) -> list[str]:
    """'  mixture, share of the 480 examples trained: data.sources[0] 70.0% (weight 70.0%), ...' or nothing."""
    if report is None:
        return []
    shares = ", ".join(
        f"{s['source']} {s['trained_share']:.1%} (weight {s['weight_share']:.1%})" for s in report["sources"]
    )
    return [f"  mixture, share of the {report['positions']} {report['unit']} trained: {shares}"]


def mixture_values(report: dict | None) -> dict[str, float]:
    """The realised shares as numbers, for the trackers' summaries."""
    if report is None:
        return {}
    return {f"mixture/source{k}/trained_share": s["trained_share"] for k, s in enumerate(report["sources"])}
