"""Fine-tuning core: pure torch, no database, queue or HTTP. The job layer passes samples, a backbone, a
:class:`FinetuneConfig` and :class:`Callbacks`; :func:`finetune` returns a :class:`FinetuneResult`.

Imports torch: import it only in worker processes (the API process lists backbones without torch)."""

from workers.training.callbacks import Callbacks, TrainingCancelled
from workers.training.config import FinetuneConfig, Unfreeze
from workers.training.data import Samples
from workers.training.logits import predict_logits
from workers.training.loop import FinetuneResult, finetune

__all__ = [
    "Callbacks",
    "FinetuneConfig",
    "FinetuneResult",
    "Samples",
    "TrainingCancelled",
    "Unfreeze",
    "finetune",
    "predict_logits",
]
