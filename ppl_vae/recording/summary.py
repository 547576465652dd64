"""What the recording wing did in a run, for its settings: graphs recorded and compiled, compile
time, whether the ragged last batch was padded, and why a compile did not happen."""

from __future__ import annotations

from ppl_vae.recording.compile import TraceOnce
from ppl_vae.recording.fused import FusedAdamStep

__all__ = ["step_summary"]


def step_summary(recorder: TraceOnce | None, fused: FusedAdamStep | None,
                 padding_note: str | None) -> dict:
    """``{"graphs_recorded", "graphs_compiled", "compile_seconds", "background_seconds",
    "padding", "eager", "note"}`` of a run's step (``{}`` for Pyro's eager step). With a fused
    step its own recorder counts; ``graphs_compiled`` counts the compiled graphs the run built
    (one per batch signature)."""
    if fused is not None:
        recorder = fused.recorder
    if recorder is None:
        return {}
    compiled = recorder.num_compiled + (0 if fused is None else fused.num_built)
    seconds = recorder.compile_seconds + (0.0 if fused is None else fused.compile_seconds)
    note = recorder.background_note if fused is None else fused.eager_reason
    pending = recorder.compile_pending or (fused is not None and fused.compile_pending)
    if note is None and pending:
        note = "the background compile was still under way when training ended"
    return {"graphs_recorded": recorder.num_traces, "graphs_compiled": compiled,
            "compile_seconds": round(seconds, 3),
            "background_seconds": round(recorder.background_seconds + (
                0.0 if fused is None else fused.background_seconds), 3),
            "padding": padding_note, "eager": recorder.eager_reason, "note": note}
