from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import InvalidInput, JobCancelled
from tests.training.factories import digit_split, small_spec
from workers.backbones import get_backbone
from workers.training import Callbacks, FinetuneConfig, Samples, TrainingCancelled, finetune, predict_logits
from workers.training.augment import batch_transform
from workers.training.data import decode

LENET = get_backbone("lenet5")


def _accuracy(model: torch.nn.Module, samples: Samples, spec: Any) -> float:
    images = decode(samples, spec.preprocessing)
    logits = predict_logits(model, images, spec.preprocessing)
    return float((logits.argmax(1) == torch.as_tensor(samples.labels)).float().mean())


@pytest.mark.parametrize(
    ("unfreeze", "data_path", "augment", "lr"),
    [
        ("head", "cached", (), 2e-2),  # a linear probe on LeNet's random features: it needs a larger step
        ("last:2", "cached", (), 1e-2),
        ("last:2", "cached", ("hflip", "vflip"), 1e-2),  # the prefix run once per flip variant
        ("last:2", "augmented", ("shift", "pca_color"), 1e-2),
        ("gradual", "augmented", ("rotate",), 1e-2),
    ],
)
def test_both_paths_learn_real_digits(
    digits_split: tuple[Samples, Samples], unfreeze: str, data_path: str, augment: tuple[str, ...], lr: float
) -> None:
    train, val = digits_split
    cfg = FinetuneConfig(
        epochs=6,
        unfreeze=unfreeze,
        data_path=data_path,
        augment=augment,
        lr=lr,
        batch_size=32,
        early_stopping_patience=0,
        head_init="random",  # learning from scratch; the probe start is tested in test_lpft.py
        refit=False,  # the selected epoch's model itself (the refit on train + val is tested in test_lpft.py)
    )
    result = finetune(LENET, train, val, cfg)
    assert result.data_path == data_path and len(result.history) == 6
    assert set(result.history[0]) == {
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "seconds",
        "trainable_stages",
    }
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0]
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    best = result.history[result.best_epoch - 1]
    assert best["val_acc"] > 0.5  # 10 classes: chance is 0.1
    assert best["val_loss"] == min(row["val_loss"] for row in result.history)
    # the returned model is the best epoch's, normalised and evaluated the same way by predict_logits
    assert _accuracy(result.model, val, LENET) == pytest.approx(best["val_acc"], abs=1e-6)
    assert result.classes == [str(i) for i in range(10)]
    with torch.no_grad():
        x = torch.zeros(2, 1, 32, 32)
        assert result.model.forward_head(result.model.forward_features(x), pre_logits=True).shape == (2, 84)
    expected_stages = {"head": [0] * 6, "last:2": [2] * 6, "gradual": [0, 1, 2, 3, 4, 4]}[unfreeze]
    assert [row["trainable_stages"] for row in result.history] == expected_stages


def test_flips_are_cached_once_per_variant_and_drawn_at_random() -> None:
    """Head only with hflip + vflip: the frozen trunk runs once over each of the 4 flip variants of the
    training images (exactly the features of the flipped images), and each epoch every image appears once, in a
    variant drawn at random, all four about equally often; past the memory budget the augmented path streams."""
    from workers.training.datapaths import CachedPath
    from workers.training.loop import _Decoding, _Trainer
    from workers.training.probe import pooled_features

    train, val = digit_split(10, 3)
    cfg = FinetuneConfig(epochs=1, unfreeze="head", augment=("hflip", "vflip"), head_init="random")
    trainer = _Trainer(LENET, train, val, cfg, Callbacks(), torch.device("cpu"), None, _Decoding(1, 2**30), None)
    path = trainer.path
    assert isinstance(path, CachedPath) and path.train_variants.shape == (4, 100, 84)
    images = decode(train, LENET.preprocessing)
    transform = batch_transform(LENET.preprocessing, train=False)
    for variant, axes in enumerate([[], [-1], [-2], [-1, -2]]):
        flipped = images.flip(axes) if axes else images
        want = pooled_features(trainer.model, [transform(flipped)])
        np.testing.assert_allclose(path.train_variants[variant].numpy(), want, rtol=1e-5, atol=1e-5)
    rows = {
        tuple(np.round(v.numpy(), 5)): (variant, i)
        for variant in range(4)
        for i, v in enumerate(path.train_variants[variant])
    }
    seen = []
    for _ in range(4):
        epoch = [rows[tuple(np.round(x.numpy(), 5))] for xb, _ in path.batches(True) for x in xb]
        assert sorted(i for _, i in epoch) == list(range(100))  # every image once per epoch
        seen += [variant for variant, _ in epoch]
    counts = np.bincount(seen, minlength=4)
    assert counts.min() > 60  # 400 draws over 4 variants: about 100 each

    small = _Trainer(
        LENET, train, val, cfg, Callbacks(), torch.device("cpu"), None, _Decoding(1, 4 * 84 * 4 * 99), None
    )
    assert small.path.name == "augmented"


@pytest.mark.parametrize(("unfreeze", "data_path"), [("last:2", "cached"), ("gradual", "augmented")])
def test_imagenet_architecture_with_batchnorm(unfreeze: str, data_path: str) -> None:
    """mobilenet_v3_small (random weights, 48 px): BatchNorm in the trained stages, hard-swish, SE blocks."""
    spec = small_spec("mobilenet_v3_small", 48)
    train, val = digit_split(12, 4)
    cfg = FinetuneConfig(
        epochs=3,
        unfreeze=unfreeze,
        data_path=data_path,
        augment=(),
        lr=3e-3,
        batch_size=24,
        early_stopping_patience=0,
        gradual_every=1,
        optimizer="adam",
        head_init="random",
    )
    result = finetune(spec, train, val, cfg)
    losses = [row["train_loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert result.model(torch.zeros(1, 3, 48, 48)).shape == (1, 10)


def _through_storage(state: dict[str, Any]) -> dict[str, Any]:
    """What the job layer does: torch.save, later torch.load with weights_only (no pickled code)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _without_seconds(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize(
    "cfg",
    [
        FinetuneConfig(epochs=4, unfreeze="last:1", lr=3e-3, dropout=0.3, early_stopping_patience=0),
        FinetuneConfig(
            epochs=4,
            unfreeze="gradual",
            augment=("rotate", "crop", "pca_color"),
            optimizer="nesterov",
            lr=0.02,
            dropout=0.3,
            max_norm=2.0,
            label_smoothing=0.1,
            schedule="step",
            early_stopping_patience=0,
        ),
    ],
    ids=["cached", "augmented-gradual"],
)
def test_resume_after_epoch_2_of_4_matches_an_uninterrupted_run(cfg: FinetuneConfig) -> None:
    train, val = digit_split(20, 8)
    checkpoints: list[dict[str, Any]] = []
    full = finetune(LENET, train, val, cfg, callbacks=Callbacks(save_checkpoint=checkpoints.append))
    assert [c["epoch"] for c in checkpoints] == [1, 2, 3, 4]

    resumed_epochs: list[int] = []
    resumed = finetune(
        LENET,
        train,
        val,
        cfg,
        resume_state=_through_storage(checkpoints[1]),
        callbacks=Callbacks(on_epoch_end=lambda epoch, _row: resumed_epochs.append(epoch)),
    )
    assert resumed_epochs == [3, 4]
    assert _without_seconds(resumed.history) == _without_seconds(full.history)
    assert resumed.best_epoch == full.best_epoch
    assert full.state_dict.keys() == resumed.state_dict.keys()
    for key, value in full.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


def test_checkpoints_are_snapshots_and_belong_to_their_run() -> None:
    train, val = digit_split(10, 4)
    cfg = FinetuneConfig(epochs=2, unfreeze="last:1", early_stopping_patience=0)
    checkpoints: list[dict[str, Any]] = []
    finetune(LENET, train, val, cfg, callbacks=Callbacks(save_checkpoint=checkpoints.append))
    first, second = checkpoints
    assert not torch.equal(first["model"]["net.classifier.weight"], second["model"]["net.classifier.weight"])
    with pytest.raises(InvalidInput, match="different run.*config"):
        finetune(LENET, train, val, dataclasses.replace(cfg, lr=0.5), resume_state=first)


def test_should_stop_is_honoured_within_one_batch() -> None:
    train, val = digit_split(30, 5)  # 300 images: 10 batches of 32 per epoch
    events: list[tuple[str, int]] = []
    flag = {"stop": False}

    def progress(stage: str, done: int, _total: int) -> None:
        events.append((stage, done))
        if stage == "train" and len([e for e in events if e == ("train", 1)]) == 2 and done == 3:
            flag["stop"] = True  # asked during epoch 2, after its third batch

    cfg = FinetuneConfig(epochs=5, unfreeze="all", early_stopping_patience=0)
    epochs: list[int] = []
    with pytest.raises(TrainingCancelled) as err:
        finetune(
            LENET,
            train,
            val,
            cfg,
            callbacks=Callbacks(
                should_stop=lambda: flag["stop"], on_progress=progress, on_epoch_end=lambda e, _r: epochs.append(e)
            ),
        )
    assert isinstance(err.value, JobCancelled)  # the job runner records it as cancelled
    assert events[-1] == ("train", 3)  # not one more batch ran
    assert epochs == [1]


def test_cancel_while_caching_features() -> None:
    train, val = digit_split(30, 5)
    stages: list[str] = []
    callbacks = Callbacks(should_stop=lambda: "cache" in stages, on_progress=lambda stage, *_: stages.append(stage))
    with pytest.raises(TrainingCancelled):
        finetune(LENET, train, val, FinetuneConfig(epochs=3, batch_size=8), callbacks=callbacks)
    assert stages.count("cache") == 1 and "train" not in stages


def test_early_stopping_keeps_the_best_epoch() -> None:
    """Validation labels shuffled: the better the model fits the training digits, the worse the validation
    loss gets, so early stopping must fire and hand back the best epoch's weights."""
    train, val = digit_split(30, 10)
    shuffled = list(np.random.default_rng(1).permutation(val.labels))
    val = Samples(val.images, shuffled, val.classes)
    checkpoints: list[dict[str, Any]] = []
    cfg = FinetuneConfig(
        epochs=15, unfreeze="all", lr=1e-2, early_stopping_patience=2, schedule="none", head_init="random", refit=False
    )
    result = finetune(LENET, train, val, cfg, callbacks=Callbacks(save_checkpoint=checkpoints.append))
    val_losses = [row["val_loss"] for row in result.history]
    assert result.stopped_early and len(result.history) < 15
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    assert len(result.history) == result.best_epoch + 2
    assert result.history[-1]["train_loss"] < result.history[result.best_epoch - 1]["train_loss"]
    best_checkpoint = checkpoints[result.best_epoch - 1]["model"]
    for key, value in result.state_dict.items():
        assert torch.equal(value, best_checkpoint[key]), key
    assert _accuracy(result.model, val, LENET) == pytest.approx(result.history[result.best_epoch - 1]["val_acc"])


def test_png_bytes_and_arrays_decode_alike() -> None:
    as_png, _ = digit_split(3, 0, as_png=True)
    as_array, _ = digit_split(3, 0)
    prep = LENET.preprocessing
    assert torch.equal(decode(as_png, prep), decode(as_array, prep))


def test_bad_samples_are_invalid_input() -> None:
    train, val = digit_split(3, 1)
    with pytest.raises(InvalidInput, match="labels"):
        Samples(train.images, train.labels[:-1])
    with pytest.raises(InvalidInput, match="outside"):
        finetune(LENET, Samples(train.images, [12] * len(train)), val, FinetuneConfig(epochs=1))
    with pytest.raises(InvalidInput, match="last:9"):
        finetune(LENET, train, val, FinetuneConfig(epochs=1, unfreeze="last:9"))


def test_no_validation_split_monitors_training_loss() -> None:
    train, _ = digit_split(10, 0)
    result = finetune(LENET, train, Samples([], [], train.classes), FinetuneConfig(epochs=2, unfreeze="last:1"))
    assert [row["val_loss"] for row in result.history] == [None, None]
    assert result.best_epoch in (1, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("unfreeze", "data_path"), [("last:3", "cached"), ("gradual", "augmented")])
def test_cuda_mixed_precision(unfreeze: str, data_path: str) -> None:
    spec = small_spec("resnet18", 64)
    train, val = digit_split(30, 10)
    cfg = FinetuneConfig(
        epochs=3,
        unfreeze=unfreeze,
        data_path=data_path,
        lr=3e-3,
        early_stopping_patience=0,
        augment=("hflip", "pca_color") if data_path == "augmented" else (),
    )
    checkpoints: list[dict[str, Any]] = []
    result = finetune(spec, train, val, cfg, device="cuda", callbacks=Callbacks(save_checkpoint=checkpoints.append))
    losses = [row["train_loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert next(result.model.parameters()).is_cuda
    assert all(not v.is_cuda for v in result.state_dict.values())
    resumed = finetune(spec, train, val, cfg, device="cuda", resume_state=_through_storage(checkpoints[0]))
    assert len(resumed.history) == 3


def test_predict_logits_takes_numpy_hwc_and_torch_chw() -> None:
    train, _ = digit_split(2, 0)
    prep = LENET.preprocessing
    chw = decode(train, prep)
    model = finetune(LENET, train, train, FinetuneConfig(epochs=1)).model
    from_numpy = predict_logits(model, chw.permute(0, 2, 3, 1).numpy(), prep)
    torch.testing.assert_close(from_numpy, predict_logits(model, chw, prep, batch_size=3))
    assert from_numpy.shape == (20, 10) and not model.training
