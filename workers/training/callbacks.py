"""What the job layer hands the loop: optional callables for progress, cancellation and checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import JobCancelled


class TrainingCancelled(JobCancelled):
    """``should_stop()`` said so; raised before the next batch runs. A ``JobCancelled``, so the job runner
    records the job as cancelled rather than failed."""


@dataclass(frozen=True)
class Callbacks:
    """All optional. ``on_epoch_end(epoch, row)`` gets the 1-based epoch and its history row;
    ``should_stop()`` is polled before every batch; ``save_checkpoint(state)`` gets, after every epoch, a
    self-contained snapshot (CPU tensors and plain values, ``torch.save``-able and loadable with
    ``weights_only=True``) to pass back as ``resume_state``; ``on_progress(stage, done, total)`` reports
    batches of the "decode", "cache", "train" and "val" stages."""

    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None
    should_stop: Callable[[], bool] | None = None
    save_checkpoint: Callable[[dict[str, Any]], None] | None = None
    on_progress: Callable[[str, int, int], None] | None = None

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("fine-tuning was cancelled")

    def progress(self, stage: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, done, total)
