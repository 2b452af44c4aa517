"""The fine-tuning loop (the model side, after Lightning's ``LightningModule``/``Trainer``): a new head on a
registered backbone, the freeze schedule, one of the two data paths, the optimizer and LR schedule, early
stopping on validation loss with the best epoch's weights kept, checkpoints every epoch and an exact resume.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from core.errors import InvalidInput
from workers.backbones.network import BackboneModel
from workers.backbones.spec import BackboneSpec
from workers.training import rng
from workers.training.augment import rgb_pca
from workers.training.callbacks import Callbacks
from workers.training.config import FinetuneConfig
from workers.training.data import Samples, class_names, decode
from workers.training.datapaths import AugmentedPath, CachedPath, DataPath, ImageData
from workers.training.device import Precision, deterministic, pick_device
from workers.training.freeze import FreezeSchedule
from workers.training.new_head import apply_max_norm, new_head
from workers.training.optim import build_optimizer, lr_factor, set_epoch_lr

CHECKPOINT_FORMAT = 1


@dataclass
class FinetuneResult:
    """``model``: the backbone wrapper with its new head, best epoch's weights, eval mode (its
    ``forward_head(pre_logits=True)`` still gives features); ``state_dict``: the same weights on the CPU,
    to store; ``best_epoch`` is 1-based like the history rows."""

    model: BackboneModel
    classes: list[str]
    history: list[dict[str, Any]]
    best_epoch: int
    state_dict: dict[str, torch.Tensor]
    data_path: str
    stopped_early: bool


def finetune(
    spec: BackboneSpec,
    train: Samples,
    val: Samples,
    cfg: FinetuneConfig,
    *,
    callbacks: Callbacks | None = None,
    resume_state: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    pretrained: bool | None = None,
    num_workers: int = 0,
    pca: tuple[torch.Tensor, torch.Tensor] | None = None,
    deterministic_algorithms: bool = True,
) -> FinetuneResult:
    """Fine-tune ``spec`` on ``train``, early-stopping on ``val``. ``resume_state`` (a ``save_checkpoint``
    snapshot of the same run) continues after its last epoch with identical results. ``pca``: the
    dataset's :func:`~workers.training.augment.rgb_pca`, computed from ``train`` when needed and not given.
    Raises ``InvalidInput`` for bad data or settings and ``TrainingCancelled`` when ``should_stop()``."""
    with deterministic(deterministic_algorithms):
        trainer = _Trainer(
            spec, train, val, cfg, callbacks or Callbacks(), pick_device(device), pretrained, num_workers, pca
        )
        return trainer.fit(resume_state)


class _Trainer:
    def __init__(
        self,
        spec: BackboneSpec,
        train: Samples,
        val: Samples,
        cfg: FinetuneConfig,
        callbacks: Callbacks,
        device: torch.device,
        pretrained: bool | None,
        num_workers: int,
        pca: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        from workers.backbones import load_model

        if len(train) == 0:
            raise InvalidInput("fine-tuning needs at least one training image")
        self.spec, self.cfg, self.cb = spec, cfg, callbacks
        self.classes = class_names(train, val)
        self.precision = Precision.for_device(device)
        self.generator = rng.seed_everything(cfg.seed)
        self.model = load_model(spec, pretrained=pretrained)
        self.head = new_head(self.model, len(self.classes), dropout=cfg.dropout, init=cfg.init)
        self.model.to(device)
        if self.precision.cuda:
            self.model.to(memory_format=torch.channels_last)
        cfg.validate(num_stages=len(self.model.stages()))
        self.schedule = FreezeSchedule(
            self.model.stages(), cfg.policy, every=cfg.gradual_every, lr_decay=cfg.discriminative_lr_decay
        )
        self.schedule.freeze_before_training()
        head_group = {"params": list(self.head.parameters()), "lr": cfg.lr, "base_lr": cfg.lr, "name": "head"}
        self.optimizer = build_optimizer(cfg, [head_group])
        self.scaler = self.precision.grad_scaler()
        self.path = self._data_path(train, val, num_workers, pca)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "loss": math.inf, "state": None}
        self.bad_epochs = 0
        self.stopped = False

    def _data_path(
        self, train: Samples, val: Samples, num_workers: int, pca: tuple[torch.Tensor, torch.Tensor] | None
    ) -> DataPath:
        prep, cfg = self.spec.preprocessing, self.cfg
        data = ImageData(
            decode(train, prep, self.cb),
            torch.as_tensor(train.labels, dtype=torch.long),
            decode(val, prep, self.cb),
            torch.as_tensor(val.labels, dtype=torch.long),
        )
        if cfg.resolved_data_path() == "cached":
            return CachedPath(
                self.model,
                data,
                prep,
                cut=self.schedule.first_trainable(0),
                batch_size=cfg.batch_size,
                generator=self.generator,
                precision=self.precision,
                callbacks=self.cb,
            )
        if "pca_color" in cfg.augment and pca is None:
            pca = rgb_pca(data.train_x, seed=cfg.seed)
        return AugmentedPath(
            self.model,
            data,
            prep,
            augment=cfg.augment,
            pca=pca,
            batch_size=cfg.batch_size,
            generator=self.generator,
            precision=self.precision,
            num_workers=num_workers,
        )

    # --- the epoch loop -------------------------------------------------------------------------------------

    def fit(self, resume_state: dict[str, Any] | None) -> FinetuneResult:
        start = self._restore(resume_state) if resume_state is not None else 0
        for epoch in range(start, self.cfg.epochs):
            if self.stopped:
                break
            row = self._epoch(epoch)
            self.history.append(row)
            self._track(epoch, row)
            if self.cb.save_checkpoint is not None:
                self.cb.save_checkpoint(self.state(epoch + 1))
            if self.cb.on_epoch_end is not None:
                self.cb.on_epoch_end(epoch + 1, dict(row))
        return self._result()

    def _epoch(self, epoch: int) -> dict[str, Any]:
        started = time.perf_counter()
        self.schedule.unfreeze_for(epoch, self.optimizer, self.cfg.lr)
        self.path.set_cut(self.schedule.first_trainable(epoch))
        lr = set_epoch_lr(self.optimizer, lr_factor(self.cfg.schedule, epoch, self.cfg.epochs))
        train_loss, train_acc = self._train_one_epoch()
        val_loss, val_acc = self._evaluate()
        return {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "seconds": time.perf_counter() - started,
            "trainable_stages": self.schedule.num_trainable(epoch),
        }

    def _train_one_epoch(self) -> tuple[float, float]:
        self.schedule.set_train_mode(self.model)
        meter, num_batches = _Meter(self.precision.device), self.path.num_batches(True)
        for done, (x, y) in enumerate(self.path.batches(True), 1):
            self.cb.check_stop()
            with self.precision.autocast():
                logits = self.path.forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            apply_max_norm(self.head, self.cfg.max_norm)
            meter.add(loss.detach() * len(y), logits.detach(), y)
            self.cb.progress("train", done, num_batches)
        return meter.result()  # type: ignore[return-value]  # never empty: train has images

    @torch.no_grad()
    def _evaluate(self) -> tuple[float | None, float | None]:
        """Validation loss without label smoothing: the generalisation error that early stopping watches."""
        self.model.eval()
        meter, num_batches = _Meter(self.precision.device), self.path.num_batches(False)
        for done, (x, y) in enumerate(self.path.batches(False), 1):
            self.cb.check_stop()
            with self.precision.autocast():
                logits = self.path.forward(x).float()
            meter.add(F.cross_entropy(logits, y, reduction="sum"), logits, y)
            self.cb.progress("val", done, num_batches)
        return meter.result()

    def _track(self, epoch: int, row: dict[str, Any]) -> None:
        """Early stopping on the validation loss (training loss when there is no validation split)."""
        monitored = row["val_loss"] if row["val_loss"] is not None else row["train_loss"]
        if monitored < self.best["loss"]:  # NaN never improves
            self.best = {"epoch": epoch + 1, "loss": monitored, "state": _cpu_copy(self.model.state_dict())}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        patience = self.cfg.early_stopping_patience
        self.stopped = patience > 0 and self.bad_epochs >= patience

    def _result(self) -> FinetuneResult:
        if self.best["state"] is not None:
            self.model.load_state_dict(self.best["state"])
        best_epoch = self.best["epoch"] or len(self.history)
        self.model.eval().requires_grad_(False)
        return FinetuneResult(
            model=self.model,
            classes=list(self.classes),
            history=[dict(r) for r in self.history],
            best_epoch=best_epoch,
            state_dict=_cpu_copy(self.model.state_dict()),
            data_path=self.path.name,
            stopped_early=self.stopped and len(self.history) < self.cfg.epochs,
        )

    # --- checkpoints --------------------------------------------------------------------------------------------

    def state(self, epochs_done: int) -> dict[str, Any]:
        """Everything a resumed run needs, detached from the live tensors (the caller may keep it in memory)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "backbone": self.spec.name,
            "config": _plain_config(self.cfg),
            "classes": list(self.classes),
            "data_path": self.path.name,
            "epoch": epochs_done,
            "model": _cpu_copy(self.model.state_dict()),
            "optimizer": _cpu_copy(self.optimizer.state_dict()),
            "scaler": _cpu_copy(self.scaler.state_dict()),
            "history": copy.deepcopy(self.history),
            "best": dict(self.best),
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            "rng": rng.capture(self.generator),
        }

    def _restore(self, state: dict[str, Any]) -> int:
        """Load a snapshot; returns the epoch to continue from (0-based)."""
        self._check_compatible(state)
        epochs_done = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        if epochs_done > 0:  # rebuild the parameter groups the optimizer had, in the same order, then load it
            self.schedule.unfreeze_for(epochs_done - 1, self.optimizer, self.cfg.lr)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = copy.deepcopy(list(state["history"]))
        self.best = dict(state["best"])
        self.bad_epochs, self.stopped = int(state["bad_epochs"]), bool(state["stopped"])
        rng.restore(state["rng"], self.generator)
        return epochs_done

    def _check_compatible(self, state: dict[str, Any]) -> None:
        expected = {
            "format": CHECKPOINT_FORMAT,
            "backbone": self.spec.name,
            "config": _plain_config(self.cfg),
            "classes": list(self.classes),
            "data_path": self.path.name,
        }
        wrong = [k for k, v in expected.items() if _plain(state.get(k)) != _plain(v)]
        if wrong:
            raise InvalidInput(f"the checkpoint belongs to a different run (differs in: {', '.join(wrong)})")


class _Meter:
    """Loss and accuracy summed on the device; one host sync per epoch instead of one per batch."""

    def __init__(self, device: torch.device) -> None:
        self.count = 0
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)

    def add(self, loss_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.count += len(labels)
        self.loss += loss_sum
        self.correct += (logits.argmax(1) == labels).sum()

    def result(self) -> tuple[float | None, float | None]:
        if self.count == 0:
            return None, None
        return self.loss.item() / self.count, self.correct.item() / self.count


def _cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor cloned to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def _plain_config(cfg: FinetuneConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def _plain(value: Any) -> Any:
    """Tuples as lists, so that a checkpoint that went through JSON still compares equal."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
