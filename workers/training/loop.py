"""The fine-tuning loop (the model side, after Lightning's ``LightningModule``/``Trainer``): a new head on a
registered backbone — by default the linear probe of the training split folded into it (LP-FT), so epoch 0
is the probe — the freeze schedule, one of the two data paths, the optimizer with a warm-up + cosine
schedule and discriminative rates (or a learning-rate range test for ``lr: "auto"``), the best epoch by the
monitored validation metric picked (epoch 0, the probe, among the candidates) and then trained again on
train + val (``refit``), early stopping, checkpoints every epoch and an exact resume.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import InvalidInput
from workers.backbones.network import BackboneModel
from workers.backbones.spec import BackboneSpec
from workers.training import rng
from workers.training.augment import batch_transform
from workers.training.callbacks import Callbacks
from workers.training.config import FinetuneConfig
from workers.training.cut import Split
from workers.training.data import (
    DECODE_THREADS,
    DECODED_CACHE_BYTES,
    DecodedImages,
    Samples,
    class_names,
    in_order,
    joined,
    prefetch,
    sampled_rgb_pca,
    split_budget,
)
from workers.training.datapaths import AugmentedPath, CachedPath, DataPath, ImageData
from workers.training.device import Precision, deterministic, pick_device
from workers.training.freeze import FreezeSchedule
from workers.training.lr_find import LR_FIND_STEPS, range_test, valley
from workers.training.new_head import apply_max_norm, new_head
from workers.training.optim import build_optimizer, lr_factor, set_epoch_lr
from workers.training.probe import ProbeHead, fit_probe, load_head, pooled_features

# 2: epoch 0 (the probe) can be the best epoch, the resolved learning rate and the range test are kept.
# 3: the config has ``refit``. Format 1 and 2 checkpoints still resume (with the fields they knew).
CHECKPOINT_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)


@dataclass
class FinetuneResult:
    """``model``: the backbone wrapper with its new head, best epoch's weights, eval mode (its
    ``forward_head(pre_logits=True)`` still gives features); ``state_dict``: the same weights on the CPU,
    to store; ``best_epoch`` is 1-based like the history rows, 0 when the starting point (the probe) stayed
    the best; ``initial``: the starting point evaluated on validation (and how the head was initialised);
    ``lr``: the head's base learning rate (found by the range test when asked, whose curve is ``lr_find``);
    ``refit_on_val``: the kept model was trained again on train + val after the selection (``refit`` says how,
    when a trained epoch won; the probe refitted when epoch 0 did)."""

    model: BackboneModel
    classes: list[str]
    history: list[dict[str, Any]]
    best_epoch: int
    state_dict: dict[str, torch.Tensor]
    data_path: str
    stopped_early: bool
    initial: dict[str, Any] = dataclasses.field(default_factory=dict)
    lr: float = 0.0
    lr_find: dict[str, Any] | None = None
    probe: ProbeHead | None = None  # the probe the kept head started from (None: random head, or a resumed run)
    refit_on_val: bool = False
    refit: dict[str, Any] | None = None  # the run on train + val: epochs, images, seconds, train loss/accuracy


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
    decode_threads: int = DECODE_THREADS,
    decoded_cache_bytes: int = DECODED_CACHE_BYTES,
    pca: tuple[torch.Tensor, torch.Tensor] | None = None,
    deterministic_algorithms: bool = True,
    probe_features: np.ndarray | None = None,
    probe_val_features: np.ndarray | None = None,
) -> FinetuneResult:
    """Fine-tune ``spec`` on ``train``, early-stopping on ``val``. ``resume_state`` (a ``save_checkpoint``
    snapshot of the same run) continues after its last epoch with identical results. ``pca``: the
    dataset's :func:`~workers.training.augment.rgb_pca`, computed from ``train`` when needed and not given.
    ``probe_features``: pooled features of ``train`` (same order) from the feature cache, for the probe that
    initialises the head (``head_init="probe"``); without them the model computes them itself (eval mode).
    ``probe_val_features``: the same for ``val``, for the probe of train + val that the refit after selection
    starts from (``refit``, ``refit_probe``). Images are decoded a batch at a time by ``decode_threads`` threads, a few
    batches ahead; at most ``decoded_cache_bytes`` of decoded images (both splits) stay in memory.
    Raises ``InvalidInput`` for bad data or settings and ``TrainingCancelled`` when ``should_stop()``."""
    with deterministic(deterministic_algorithms):
        trainer = _Trainer(
            spec,
            train,
            val,
            cfg,
            callbacks or Callbacks(),
            pick_device(device),
            pretrained,
            _Decoding(decode_threads, decoded_cache_bytes),
            pca,
            # a run resumes on the path it started on (an earlier version resolved "auto" otherwise)
            resume_state.get("data_path") if resume_state is not None and cfg.data_path == "auto" else None,
        )
        return trainer.fit(resume_state, probe_features, probe_val_features)


@dataclass(frozen=True)
class _Decoding:
    threads: int
    cache_bytes: int


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
        decoding: _Decoding,
        pca: tuple[torch.Tensor, torch.Tensor] | None,
        path_name: str | None = None,
        known_prefix: torch.Tensor | None = None,
    ) -> None:
        """``path_name``: the data path to take instead of the config's (a resumed run keeps its own);
        ``known_prefix``: the cached path's outputs for the first training images, from an earlier run."""
        from workers.backbones import load_model

        if len(train) == 0:
            raise InvalidInput("fine-tuning needs at least one training image")
        self.spec, self.cfg, self.cb = spec, cfg, callbacks
        self.samples, self.device, self.pretrained, self.decoding = (train, val), device, pretrained, decoding
        self.classes = class_names(train, val)
        self.precision = Precision.for_device(device)
        self.generator = rng.seed_everything(cfg.seed)
        self.model = load_model(spec, pretrained=pretrained)
        self.head = new_head(self.model, len(self.classes), dropout=cfg.dropout, init=cfg.init)
        self.model.to(device)
        if self.precision.cuda:
            self.model.to(memory_format=torch.channels_last)
        cfg.validate(num_stages=len(self.model.stages()))
        num_stages = len(self.model.stages())
        self.schedule = FreezeSchedule(
            self.model.stages(), cfg.policy, every=cfg.gradual_every, lr_decay=cfg.stage_lr_decay(num_stages)
        )
        self.schedule.freeze_before_training()
        self.bn_eval = cfg.resolved_bn_eval()
        self.scaler = self.precision.grad_scaler()
        self.pca = pca
        self.path = self._data_path(train, val, decoding, pca, path_name, known_prefix)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "key": [math.inf, math.inf], "state": None}
        self.bad_epochs = 0
        self.stopped = False
        self.initial: dict[str, Any] = {}
        self.lr = cfg.resolved_lr() if not cfg.auto_lr else 0.0  # found in fit()
        self.lr_find: dict[str, Any] | None = None
        self.probe: ProbeHead | None = None
        self.probe_inputs: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        self.optimizer: torch.optim.Optimizer = build_optimizer(
            cfg, [self._head_group(self.lr or 1.0)], lr=self.lr or 1.0
        )

    def _head_group(self, lr: float) -> dict[str, Any]:
        return {"params": list(self.head.parameters()), "lr": lr, "base_lr": lr, "name": "head"}

    def _data_path(
        self,
        train: Samples,
        val: Samples,
        decoding: _Decoding,
        pca: tuple[torch.Tensor, torch.Tensor] | None,
        path_name: str | None,
        known_prefix: torch.Tensor | None = None,
    ) -> DataPath:
        prep, cfg = self.spec.preprocessing, self.cfg
        train_cache, val_cache = split_budget(decoding.cache_bytes, len(train), len(val))
        data = ImageData(
            DecodedImages(train.images, prep, train_cache),
            torch.as_tensor(train.labels, dtype=torch.long),
            DecodedImages(val.images, prep, val_cache),
            torch.as_tensor(val.labels, dtype=torch.long),
            threads=decoding.threads,
        )
        self.data = data
        name = path_name or cfg.resolved_data_path()
        if name == "cached" and path_name is None and cfg.data_path == "auto" and cfg.augment:
            name = "cached" if self._variants_fit(len(train), decoding.cache_bytes) else "augmented"
        if name == "cached":
            return CachedPath(
                self.model,
                data,
                prep,
                cut=self.schedule.first_trainable(0),
                batch_size=cfg.batch_size,
                generator=self.generator,
                precision=self.precision,
                callbacks=self.cb,
                flips=cfg.augment,
                known=known_prefix,
            )
        if "pca_color" in cfg.augment and pca is None:
            pca = sampled_rgb_pca(data.train_x, seed=cfg.seed, threads=decoding.threads)
        self.pca = pca
        return AugmentedPath(
            self.model,
            data,
            prep,
            augment=cfg.augment,
            pca=pca,
            batch_size=cfg.batch_size,
            generator=self.generator,
            precision=self.precision,
        )

    @torch.no_grad()
    def _variants_fit(self, num_images: int, budget_bytes: int) -> bool:
        """Whether the frozen prefix's output for every flip variant of every training image fits in the
        decoded-image budget (else the augmented path streams them); measured on one blank image."""
        size = self.spec.preprocessing.input_size
        channels = 1 if self.spec.preprocessing.grayscale else 3
        self.model.eval()
        cut = Split(self.model, self.schedule.first_trainable(0))
        out = cut.prefix(torch.zeros(1, channels, size, size, device=self.precision.device))
        return out.numel() * 4 * 2 ** len(self.cfg.augment) * num_images <= budget_bytes

    # --- the epoch loop -------------------------------------------------------------------------------------

    def fit(
        self,
        resume_state: dict[str, Any] | None,
        probe_features: np.ndarray | None = None,
        probe_val_features: np.ndarray | None = None,
    ) -> FinetuneResult:
        self.probe_inputs = (probe_features, probe_val_features)
        start = self._restore(resume_state) if resume_state is not None else self._start(probe_features)
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

    # --- the starting point: the probe, the learning rate, epoch 0 ------------------------------------------

    def _start(self, probe_features: np.ndarray | None) -> int:
        """Initialise the head (probe or random), resolve the learning rate, evaluate epoch 0."""
        started = time.perf_counter()
        self.initial = {"epoch": 0, "head_init": "random"}
        if self.cfg.head_init == "probe":
            self.initial.update(self._init_from_probe(probe_features))
        if self.cfg.auto_lr:
            self.lr, self.lr_find = self._find_lr()
        self.optimizer = build_optimizer(self.cfg, [self._head_group(self.lr)], lr=self.lr)
        val_loss, val_acc = self._evaluate()
        self.initial.update(val_loss=val_loss, val_acc=val_acc, seconds=time.perf_counter() - started)
        if self.initial["head_init"] == "probe" and val_loss is not None:  # the probe is a candidate
            self._track(-1, self.initial)
            self.bad_epochs = 0
        return 0

    def _init_from_probe(self, probe_features: np.ndarray | None) -> dict[str, Any]:
        if self.model.layout.head or not isinstance(self.head, torch.nn.Linear):
            return {"head_init": "random", "note": "this backbone's head is not a Linear on pooled features"}
        source = "cache"
        if probe_features is None:
            probe_features, source = self._split_features(train=True), "model"
        features = np.asarray(probe_features, dtype=np.float32)
        labels = self.data.train_y.numpy()
        if features.shape != (len(labels), self.model.num_features):
            raise InvalidInput(
                f"probe features are {features.shape}; expected ({len(labels)}, {self.model.num_features})"
            )
        self.cb.progress("probe", 0, 1)
        try:
            probe = fit_probe(features, labels, list(self.classes), seed=self.cfg.seed)
        except ValueError as exc:
            raise InvalidInput(f"cannot fit the linear probe that starts the head: {exc}") from exc
        load_head(self.head, probe)
        self.probe = probe
        self.cb.progress("probe", 1, 1)
        return {"head_init": "probe", "probe_C": probe.C, "probe_cv_score": probe.cv_score, "features": source}

    def _split_features(self, *, train: bool) -> np.ndarray:
        """Pooled features of one split's un-augmented images through this very model, in eval mode."""
        path = self.path
        if isinstance(path, CachedPath) and path.split.cut == len(self.model.stages()) and not self.model.layout.head:
            return path.inputs[train].float().cpu().numpy()  # head only: the cache already holds them
        transform = batch_transform(self.spec.preprocessing, train=False)
        images = self.data.train_x if train else self.data.val_x
        orders = in_order(len(images), 2 * self.cfg.batch_size)

        def batches() -> Any:
            for _, batch in prefetch(orders, images, threads=self.data.threads):
                self.cb.check_stop()
                with self.precision.autocast():
                    yield transform(self.precision.to_device(batch))

        return pooled_features(self.model, batches())

    def _find_lr(self) -> tuple[float, dict[str, Any]]:
        """The learning-rate range test on the training split from the starting point; the model, the RNG
        and the optimizer are as before it afterwards."""
        saved, rng_state = _cpu_copy(self.model.state_dict()), self.generator.get_state()
        self.schedule.unfreeze_for(0)
        self.path.set_cut(self.schedule.first_trainable(0))
        groups = [self._head_group(1.0)] + [self.schedule.param_group(i, 1.0) for i in self.schedule.trainable(0)]
        optimizer = build_optimizer(self.cfg, groups, lr=1.0)
        scaler = self.precision.grad_scaler()  # its own: the run's scaler state must not see the test

        def step(x: torch.Tensor, y: torch.Tensor) -> float:
            self.schedule.set_train_mode(self.model, bn_eval=self.bn_eval)
            with self.precision.autocast():
                logits = self.path.forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            return float(loss.detach())

        def batches() -> Any:
            while True:
                yield from self.path.batches(True)

        curve = range_test(step, optimizer, batches(), steps=LR_FIND_STEPS, check_stop=self.cb.check_stop)
        self.model.load_state_dict(saved)
        self.generator.set_state(rng_state)
        self.schedule.freeze_before_training()
        lr = valley(curve["lr"], curve["loss"])
        return lr, {**curve, "suggested": lr, "rule": "valley"}

    def _epoch(self, epoch: int) -> dict[str, Any]:
        started = time.perf_counter()
        self.schedule.unfreeze_for(epoch, self.optimizer, self.lr)
        self.path.set_cut(self.schedule.first_trainable(epoch))
        lr = set_epoch_lr(self.optimizer, self._lr_factor(epoch, 0, self.path.num_batches(True)))  # first step's
        train_loss, train_acc = self._train_one_epoch(epoch)
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

    def _lr_factor(self, epoch: int, done: int, num_batches: int) -> float:
        """The schedule's factor for the step after ``done`` of ``num_batches`` steps of ``epoch``."""
        step = 1.0 / max(1, num_batches)
        return lr_factor(self.cfg.schedule, epoch + done * step, self.cfg.epochs, self.cfg.warmup, step)

    def _train_one_epoch(self, epoch: int) -> tuple[float, float]:
        self.schedule.set_train_mode(self.model, bn_eval=self.bn_eval)
        meter, num_batches = _Meter(self.precision.device), self.path.num_batches(True)
        for done, (x, y) in enumerate(self.path.batches(True), 1):
            self.cb.check_stop()
            set_epoch_lr(self.optimizer, self._lr_factor(epoch, done - 1, num_batches))
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

    def _monitored(self, row: dict[str, Any]) -> list[float]:
        """Lower is better: the validation loss, or (minus the validation accuracy, then its loss); the
        training loss when there is no validation split."""
        if row.get("val_loss") is None:
            return [row["train_loss"], 0.0]
        if self.cfg.monitor == "val_acc":
            return [-row["val_acc"], row["val_loss"]]
        return [row["val_loss"], 0.0]

    def _track(self, epoch: int, row: dict[str, Any]) -> None:
        """The best epoch by the monitored metric, and early stopping on it (``epoch`` -1: the start)."""
        monitored = self._monitored(row)
        if all(np.isfinite(monitored)) and monitored < self.best["key"]:  # NaN never improves
            self.best = {"epoch": epoch + 1, "key": monitored, "state": _cpu_copy(self.model.state_dict())}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        patience = self.cfg.early_stopping_patience
        self.stopped = patience > 0 and self.bad_epochs >= patience

    def _refit_probe(self) -> bool:
        """Epoch 0 stayed the best: nothing trained on the training split beat the probe, so — as the
        linear-probe strategy does after its C search — the probe is refitted on train + val (C searched
        again) and becomes the head. The selection was made on a clean validation split; the refit comes after
        it. Returns whether it happened."""
        if not (self.cfg.refit_probe and self.initial.get("head_init") == "probe" and len(self.data.val_y)):
            return False
        train_x, val_x = self.probe_inputs
        train_x = self._split_features(train=True) if train_x is None else train_x
        val_x = self._split_features(train=False) if val_x is None else val_x
        features = np.concatenate([np.asarray(train_x, np.float32), np.asarray(val_x, np.float32)])
        labels = np.concatenate([self.data.train_y.numpy(), self.data.val_y.numpy()])
        try:
            probe = fit_probe(features, labels, list(self.classes), seed=self.cfg.seed)
        except ValueError:
            return False
        load_head(self.head, probe)
        self.probe = probe
        return True

    def _refit(self, epochs: int) -> _Trainer:
        """A trained epoch won the selection on val: the same training again — same config, seed, learning rate
        and schedule — on train + val, from the probe of train + val, stopped after ``epochs`` epochs (the
        best), and that model kept. The selection was made on a clean validation split; the refit comes after
        it, as a linear probe's does after its C search. Returns the trainer that ran it."""
        train, val = self.samples
        cfg = dataclasses.replace(self.cfg, lr=self.lr, early_stopping_patience=0, refit=False, refit_probe=False)
        train_x, val_x = self.probe_inputs
        features = None
        if train_x is not None and val_x is not None:
            features = np.concatenate([np.asarray(train_x, np.float32), np.asarray(val_x, np.float32)])
        on_progress = self.cb.on_progress
        callbacks = Callbacks(
            should_stop=self.cb.should_stop,
            on_progress=None if on_progress is None else lambda _stage, done, total: on_progress("refit", done, total),
        )
        empty = Samples([], [], list(self.classes))
        # train + val start with the training images: their frozen-prefix outputs are already cached
        known = self.path.train_variants if isinstance(self.path, CachedPath) else None
        trainer = _Trainer(
            self.spec,
            joined(train, val),
            empty,
            cfg,
            callbacks,
            self.device,
            self.pretrained,
            self.decoding,
            self.pca,
            known_prefix=known,
        )
        trainer.run_for(epochs, features)
        return trainer

    def run_for(self, epochs: int, probe_features: np.ndarray | None) -> None:
        """The first ``epochs`` epochs without selection (no validation split): the refit's run."""
        self._start(probe_features)
        for epoch in range(epochs):
            self.history.append(self._epoch(epoch))

    def _result(self) -> FinetuneResult:
        selected = self.best["state"] is not None
        if selected:
            self.model.load_state_dict(self.best["state"])
        best_epoch = self.best["epoch"] if selected else len(self.history)
        refit = best_epoch == 0 and selected and self._refit_probe()  # sets self.probe to the refitted one
        model, probe, refit_run = self.model, self.probe, None
        if best_epoch > 0 and selected and self.cfg.refit and len(self.data.val_y):
            started = time.perf_counter()
            refitted = self._refit(best_epoch)
            model, probe, refit = refitted.model, refitted.probe, True
            last = refitted.history[-1]
            refit_run = {
                "epochs": best_epoch,
                "images": len(refitted.data.train_y),
                "train_loss": last["train_loss"],
                "train_acc": last["train_acc"],
                "seconds": time.perf_counter() - started,
            }
        model.eval().requires_grad_(False)
        return FinetuneResult(
            model=model,
            classes=list(self.classes),
            history=[dict(r) for r in self.history],
            best_epoch=best_epoch,
            state_dict=_cpu_copy(model.state_dict()),
            data_path=self.path.name,
            stopped_early=self.stopped and len(self.history) < self.cfg.epochs,
            initial=dict(self.initial),
            lr=self.lr,
            lr_find=copy.deepcopy(self.lr_find),
            probe=probe,
            refit_on_val=refit,
            refit=refit_run,
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
            "initial": dict(self.initial),
            "lr": self.lr,
            "lr_find": copy.deepcopy(self.lr_find),
        }

    def _restore(self, state: dict[str, Any]) -> int:
        """Load a snapshot; returns the epoch to continue from (0-based)."""
        self._check_compatible(state)
        epochs_done = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        self.lr = float(state.get("lr") or (self.cfg.resolved_lr() if not self.cfg.auto_lr else 0.0))
        self.initial = dict(state.get("initial") or {})
        self.lr_find = copy.deepcopy(state.get("lr_find"))
        self.optimizer = build_optimizer(self.cfg, [self._head_group(self.lr)], lr=self.lr)
        if epochs_done > 0:  # rebuild the parameter groups the optimizer had, in the same order, then load it
            self.schedule.unfreeze_for(epochs_done - 1, self.optimizer, self.lr)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = copy.deepcopy(list(state["history"]))
        best = dict(state["best"])
        if "key" not in best:  # format 1: the validation loss alone
            best["key"] = [float(best.pop("loss")), 0.0]
        self.best = best
        self.bad_epochs, self.stopped = int(state["bad_epochs"]), bool(state["stopped"])
        rng.restore(state["rng"], self.generator)
        return epochs_done

    def _check_compatible(self, state: dict[str, Any]) -> None:
        config = _plain_config(self.cfg)
        if state.get("format") in READABLE_FORMATS and state.get("format") != CHECKPOINT_FORMAT:
            config = {k: v for k, v in config.items() if k in (state.get("config") or {})}  # fields it knew
        expected = {
            "backbone": self.spec.name,
            "config": config,
            "classes": list(self.classes),
            "data_path": self.path.name,
        }
        wrong = [k for k, v in expected.items() if _plain(state.get(k)) != _plain(v)]
        if state.get("format") not in READABLE_FORMATS:
            wrong.insert(0, "format")
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
