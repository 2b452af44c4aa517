"""LP-FT: the probe folded into the torch head reproduces scikit-learn's probabilities, epoch 0 of a fine-tune
is that probe, the training graph's features are the feature cache's, the best epoch is never worse than the
probe on the monitored metric, ``lr: "auto"`` runs a range test, BatchNorm statistics stay put by default,
and checkpoints of the previous format still resume."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from classifiers.scores import softmax
from core.sample_data import digits
from tests.training.factories import digit_split, small_spec
from workers.backbones import get_backbone, load_model
from workers.training import Callbacks, FinetuneConfig, Samples, finetune, predict_logits
from workers.training.augment import batch_transform
from workers.training.data import decode, joined
from workers.training.lr_find import valley
from workers.training.optim import lr_factor
from workers.training.probe import fit_probe, load_head, pooled_features

LENET = get_backbone("lenet5")


def _digit_features(classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = digits()
    keep = labels < classes
    return images[keep].reshape(keep.sum(), -1).astype(np.float32), labels[keep]


@pytest.mark.parametrize("num_classes", [2, 10])
def test_probe_folded_into_a_linear_head_gives_predict_proba(num_classes: int) -> None:
    """Standardisation and coefficients folded into one Linear: softmax(head(x)) == pipeline.predict_proba(x)."""
    X, y = _digit_features(num_classes)
    classes = [str(i) for i in range(num_classes)]
    probe = fit_probe(X[::2], y[::2], classes)
    head = torch.nn.Linear(X.shape[1], num_classes)
    load_head(head, probe)
    with torch.no_grad():
        ours = torch.softmax(head(torch.from_numpy(X[1::2])).double(), dim=1).numpy()
    want = probe.pipeline.predict_proba(X[1::2])
    assert list(probe.pipeline.classes_) == classes
    np.testing.assert_allclose(ours, want, atol=1e-5)
    # in float64 the fold matches to scikit-learn's float32 rounding
    np.testing.assert_allclose(softmax(X[1::2].astype(np.float64) @ probe.weight.T + probe.bias), want, atol=1e-5)


def test_a_class_missing_from_the_training_split_is_never_predicted() -> None:
    X, y = _digit_features(3)
    keep = y < 2
    probe = fit_probe(X[keep], y[keep], ["0", "1", "2"])
    probs = softmax(X @ probe.weight.T + probe.bias)
    assert probs[:, 2].max() < 1e-6 and probe.weight.shape == (3, X.shape[1])


def test_epoch_0_is_the_probe_on_the_training_graph() -> None:
    """The fine-tune's starting model, through the training graph (predict_logits), gives the probabilities
    of the scikit-learn probe on that graph's pooled features, and epoch 0's validation accuracy is its."""
    train, val = digit_split(20, 10)
    cfg = FinetuneConfig(epochs=1, unfreeze="last:1", early_stopping_patience=0, refit=False)
    result = finetune(LENET, train, val, cfg)
    probe = result.probe
    assert probe is not None and result.initial["head_init"] == "probe" and result.initial["features"] == "model"

    rng_model = _seeded_lenet(cfg.seed)
    load_head(rng_model.classifier, probe)
    transform = batch_transform(LENET.preprocessing, train=False)
    val_images = decode(val, LENET.preprocessing)
    feats = pooled_features(rng_model, [transform(val_images)])
    want = probe.pipeline.predict_proba(feats)
    got = torch.softmax(predict_logits(rng_model, val_images, LENET.preprocessing).double(), 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    accuracy = float(np.mean(want.argmax(1) == np.asarray(val.labels)))
    assert result.initial["val_acc"] == pytest.approx(accuracy, abs=1e-9)


def _seeded_lenet(seed: int) -> Any:
    """The trunk a fine-tune with ``seed`` starts from (the loop seeds everything, then loads the model)."""
    from workers.training import rng

    rng.seed_everything(seed)
    model = load_model(LENET)
    model.reset_classifier(10)
    return model


def test_training_graph_features_are_the_feature_cache_features(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """efficientnet_lite0 (real weights): the pooled features the training loop computes (decode →
    ScaleNormalize → eval-mode network → pool) equal the ONNX engine's that fill the feature cache (load_rgb
    → stack_batch → engine.features), so a probe fitted on the cache is the probe of the training graph."""
    from core import storage
    from core.settings import reset_settings
    from workers.runtime.engines import clear_engine_cache, get_engine
    from workers.runtime.preprocess import load_rgb, stack_batch

    skdata = pytest.importorskip("skimage.data")
    monkeypatch.setenv("TLSERVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TLSERVE_DEVICE", "cpu")
    reset_settings()
    storage._storage_for.cache_clear()
    clear_engine_cache()
    try:
        spec = get_backbone("efficientnet_lite0")
        pictures = [skdata.coffee(), skdata.chelsea(), skdata.astronaut(), digits()[0][7]]
        encoded = []
        for pixels in pictures:
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG" if pixels.ndim == 3 else "PNG")
            encoded.append(buf.getvalue())
        engine = get_engine("efficientnet_lite0")
        cache = engine.features(stack_batch([load_rgb(b, spec.preprocessing) for b in encoded]))

        samples = Samples(encoded, [0, 1, 0, 1], ["a", "b"])
        model = load_model(spec)
        model.train()  # the helper must switch to eval mode itself
        images = decode(samples, spec.preprocessing)
        ours = pooled_features(model, [batch_transform(spec.preprocessing, train=False)(images)])
        assert model.training
        assert ours.shape == cache.shape == (4, spec.feature_dim)
        assert np.abs(ours - cache).max() <= 2e-4 * max(1.0, float(np.abs(cache).max()))
    finally:
        reset_settings()
        storage._storage_for.cache_clear()
        clear_engine_cache()


@pytest.mark.parametrize(
    ("unfreeze", "monitor"), [("head", "val_loss"), ("last:2", "val_acc"), ("gradual", "val_loss")]
)
def test_the_kept_model_is_never_worse_than_the_probe(unfreeze: str, monitor: str) -> None:
    """Real digits: the best epoch's monitored validation score is at least epoch 0's (the probe's)."""
    train, val = digit_split(30, 15)
    cfg = FinetuneConfig(
        epochs=3, unfreeze=unfreeze, monitor=monitor, early_stopping_patience=0, refit_probe=False, refit=False
    )
    result = finetune(LENET, train, val, cfg)
    initial = result.initial
    assert initial["head_init"] == "probe" and initial["val_acc"] > 0.6  # LeNet's random features + probe
    best = initial if result.best_epoch == 0 else result.history[result.best_epoch - 1]
    if monitor == "val_loss":
        assert best["val_loss"] <= initial["val_loss"]
    else:
        assert best["val_acc"] >= initial["val_acc"]
    logits = predict_logits(result.model, decode(val, LENET.preprocessing), LENET.preprocessing)
    accuracy = float((logits.argmax(1) == torch.as_tensor(val.labels)).float().mean())
    assert accuracy == pytest.approx(best["val_acc"], abs=1e-6)


def test_a_harmful_fine_tune_hands_back_the_probe() -> None:
    """A learning rate that wrecks the head: every epoch is worse, so epoch 0 (the probe) is kept — as it
    was (``refit_probe: false``), or refitted on train + val like a linear probe (the default)."""
    train, val = digit_split(20, 10)
    cfg = FinetuneConfig(
        epochs=2,
        unfreeze="all",
        optimizer="sgd",
        lr=10.0,
        warmup=0.0,
        schedule="none",
        early_stopping_patience=0,
        refit_probe=False,
    )
    result = finetune(LENET, train, val, cfg)
    assert result.best_epoch == 0 and not result.refit_on_val
    logits = predict_logits(result.model, decode(val, LENET.preprocessing), LENET.preprocessing)
    accuracy = float((logits.argmax(1) == torch.as_tensor(val.labels)).float().mean())
    assert accuracy == pytest.approx(result.initial["val_acc"], abs=1e-6)

    refitted = finetune(LENET, train, val, dataclasses.replace(cfg, refit_probe=True))
    assert refitted.best_epoch == 0 and refitted.refit_on_val
    trunk = _seeded_lenet(cfg.seed)  # epoch 0's trunk: untouched
    transform = batch_transform(LENET.preprocessing, train=False)
    features = [pooled_features(trunk, [transform(decode(s, LENET.preprocessing))]) for s in (train, val)]
    labels = np.concatenate([train.labels, val.labels])
    want = fit_probe(np.concatenate(features), labels, [str(i) for i in range(10)], seed=cfg.seed)
    np.testing.assert_allclose(refitted.state_dict["net.classifier.weight"].numpy(), want.weight, rtol=1e-5, atol=1e-4)
    for key, value in result.state_dict.items():  # the trunk is epoch 0's in both
        if not key.startswith("net.classifier"):
            assert torch.equal(value, refitted.state_dict[key]), key


def test_a_trained_epoch_that_wins_is_trained_again_on_train_and_val() -> None:
    """The selection picks the epoch on val; the kept model is the same training run again on train + val for
    that many epochs: bit for bit what training on the joined images without a validation split gives."""
    train, val = digit_split(20, 10)
    cfg = FinetuneConfig(epochs=1, unfreeze="last:1", head_init="random", early_stopping_patience=0)
    result = finetune(LENET, train, val, cfg)
    assert result.best_epoch == 1 and result.refit_on_val
    assert result.refit is not None and result.refit["epochs"] == 1 and result.refit["images"] == 300
    alone = finetune(LENET, joined(train, val), Samples([], [], list(train.classes or [])), cfg)
    assert alone.best_epoch == 1 and not alone.refit_on_val  # no validation split: nothing to select or fold in
    assert result.state_dict.keys() == alone.state_dict.keys()
    for key, value in alone.state_dict.items():
        assert torch.equal(value, result.state_dict[key]), key
    kept = finetune(LENET, train, val, dataclasses.replace(cfg, refit=False))
    assert kept.refit is None and not kept.refit_on_val
    assert not torch.equal(kept.state_dict["net.classifier.weight"], result.state_dict["net.classifier.weight"])


def test_the_refit_runs_the_frozen_part_only_over_the_validation_images(monkeypatch) -> None:
    """Head only with flips: the refit's train + val begin with the training images, whose frozen-trunk
    outputs (every flip variant) the selection run already holds; only the validation images are run."""
    from workers.training.datapaths import CachedPath

    runs: list[tuple[int, int]] = []
    real = CachedPath._run_prefix

    def counting(self, images, threads, callbacks, flip=None, start=0):  # type: ignore[no-untyped-def]
        runs.append((len(images) - start, len(flip or [])))
        return real(self, images, threads, callbacks, flip, start)

    monkeypatch.setattr(CachedPath, "_run_prefix", counting)
    train, val = digit_split(20, 10)
    cfg = FinetuneConfig(epochs=1, unfreeze="head", augment=("hflip",), head_init="random")
    result = finetune(LENET, train, val, cfg)
    assert result.refit is not None and result.data_path == "cached"
    # the selection run: train as is and flipped, val; the refit: val's 100 images as is and flipped, no val
    assert runs == [(200, 0), (200, 1), (100, 0), (100, 0), (100, 1), (0, 0)]


@pytest.mark.parametrize("unfreeze", ["head", "last:1"])
def test_the_kept_model_starts_from_the_probe_of_train_and_val(unfreeze: str) -> None:
    """Whichever epoch wins — the probe (refitted) or a trained one (trained again) — the probe the kept model
    started from, reported beside its accuracy, is the probe of train + val, as a linear probe's is."""
    train, val = digit_split(20, 10)
    result = finetune(LENET, train, val, FinetuneConfig(epochs=1, unfreeze=unfreeze, early_stopping_patience=0))
    assert result.refit_on_val and result.probe is not None
    trunk = _seeded_lenet(0)
    transform = batch_transform(LENET.preprocessing, train=False)
    features = [pooled_features(trunk, [transform(decode(s, LENET.preprocessing))]) for s in (train, val)]
    labels = np.concatenate([train.labels, val.labels])
    want = fit_probe(np.concatenate(features), labels, [str(i) for i in range(10)], seed=0)
    np.testing.assert_allclose(result.probe.weight, want.weight, rtol=1e-5, atol=1e-4)


def test_random_head_init_is_still_possible() -> None:
    train, val = digit_split(10, 5)
    result = finetune(LENET, train, val, FinetuneConfig(epochs=1, head_init="random"))
    assert result.probe is None and result.initial["head_init"] == "random"
    assert result.initial["val_acc"] < 0.4 and result.best_epoch == 1  # a random head is never the answer


def test_lr_auto_runs_a_range_test_and_resumes_with_its_rate() -> None:
    train, val = digit_split(20, 8)
    cfg = FinetuneConfig(epochs=2, unfreeze="last:1", lr="auto", early_stopping_patience=0)
    checkpoints: list[dict[str, Any]] = []
    full = finetune(LENET, train, val, cfg, callbacks=Callbacks(save_checkpoint=checkpoints.append))
    curve = full.lr_find
    assert curve is not None and 10 < len(curve["lr"]) <= 100 and len(curve["lr"]) == len(curve["loss"])
    assert curve["lr"] == sorted(curve["lr"]) and full.lr == curve["suggested"] and 1e-7 <= full.lr <= 10
    resumed = finetune(LENET, train, val, cfg, resume_state=checkpoints[0])
    assert resumed.lr == full.lr and resumed.lr_find == curve
    for key, value in full.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


def test_valley_picks_the_steep_part_of_the_descent() -> None:
    lrs = list(np.logspace(-7, 1, 100))
    # flat, then a descent between 1e-4 and 1e-1, then divergence
    losses = [2.0 if lr < 1e-4 else (2.0 - np.log10(lr / 1e-4)) / 2 + 0.5 if lr < 1e-1 else 5.0 for lr in lrs]
    assert 1e-3 < valley(lrs, losses) < 1e-1
    assert valley([], []) == 1e-3


def test_warm_up_then_cosine() -> None:
    factors = [lr_factor("cosine", e / 10, 4, warmup=0.25, step=0.1) for e in range(40)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)  # warm-up over one epoch
    assert max(factors) == pytest.approx(1.0) and factors[-1] < 0.01
    assert all(b <= a for a, b in zip(factors[10:], factors[11:], strict=False))  # then it only decreases
    assert [round(lr_factor("cosine", e, 4), 4) for e in range(4)] == [1.0, 0.8536, 0.5, 0.1464]  # warmup 0


def test_batchnorm_statistics_stay_put_while_partially_frozen() -> None:
    spec = small_spec("mobilenet_v3_small", 48)
    train, val = digit_split(8, 3)

    def running_means(cfg: FinetuneConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        from workers.training import rng

        rng.seed_everything(cfg.seed)
        before = {k: v.clone() for k, v in load_model(spec).state_dict().items() if k.endswith("running_mean")}
        after = finetune(spec, train, val, cfg).state_dict
        return before, {k: after[k] for k in before}

    cfg = FinetuneConfig(epochs=1, unfreeze="last:2", head_init="random", batch_size=16, early_stopping_patience=0)
    before, after = running_means(cfg)
    assert all(torch.equal(before[k], after[k]) for k in before)
    before, after = running_means(dataclasses.replace(cfg, bn_eval=False))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_format_1_checkpoint_still_resumes() -> None:
    """What a worker of the previous version left behind: no ``lr``/``initial``, the best by validation
    loss alone, and a config without the fields added since."""
    train, val = digit_split(10, 5)
    cfg = FinetuneConfig(epochs=2, unfreeze="last:1", head_init="random", early_stopping_patience=0)
    checkpoints: list[dict[str, Any]] = []
    finetune(LENET, train, val, cfg, callbacks=Callbacks(save_checkpoint=checkpoints.append))
    old = dict(checkpoints[0])
    old["format"] = 1
    for key in ("lr", "initial", "lr_find"):
        old.pop(key)
    new_fields = ("warmup", "head_init", "bn_eval", "monitor")
    old["config"] = {k: v for k, v in old["config"].items() if k not in new_fields}
    old["config"]["discriminative_lr_decay"] = None
    best = dict(old["best"])
    best["loss"] = best.pop("key")[0]
    old["best"] = best
    resumed = finetune(LENET, train, val, cfg, resume_state=old)
    assert len(resumed.history) == 2 and resumed.lr == cfg.resolved_lr()
    with pytest.raises(Exception, match="format"):
        finetune(LENET, train, val, cfg, resume_state={**old, "format": 99})
