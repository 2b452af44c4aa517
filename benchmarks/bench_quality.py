"""Quality on real data, through tlserve's own jobs (ingest → features → linear probe → fine-tune):

* linear probe (efficientnet_lite0 features, CV-chosen C) vs a plain scikit-learn LogisticRegression on the
  same features and split, vs logistic regression on raw pixels — on scikit-learn's digits and a stratified
  Fashion-MNIST subset (25 % test split);
* LP-FT on a Fashion-MNIST subset (digits when it is absent), averaged over seeds (each its own stratified
  split and training seed): the linear probe vs fine-tuning with the defaults — head only (starts from the
  probe), last stage + flips and crops (starts from the probe) — vs head only from a random head, held-out
  (test split) accuracy, each fine-tune's own probe accuracy on the same test split, the best epoch
  (0: the probe was kept) and seconds per run;
* test10k: the linear probe vs fine-tuning head only, last stage, and gradually unfrozen (each with
  horizontal flips, the defaults otherwise) on a pool of ~1,180 Fashion-MNIST training images and the full
  10,000-image t10k test set, over 3 seeds (each its own train/val split of the pool and training seed),
  with seconds per epoch;
* tta: the probe and a head-only fine-tune on seed 0's test10k split (``--tta-test-images`` of the t10k
  images, 2,000 by default), predicted without and with test-time augmentation (``tta=hflip``), through
  the predict path's own computation.

    .venv/bin/python benchmarks/bench_quality.py [--fashion-per-class 300] [--lpft-per-class 40] [--seeds 2]
    .venv/bin/python benchmarks/bench_quality.py --only lpft   # the LP-FT comparison alone (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench_quality.py --only test10k  # probe vs fine-tunes on the t10k set (~1 h)
    .venv/bin/python benchmarks/bench_quality.py --only tta      # test-time augmentation (~5 min)

Each section is written into ``results/quality.json`` as it finishes (the others are kept).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import RESULTS, ingest_sample, isolated_env, run_job_here, write_result


def make_dataset(
    source: str, per_class: int, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.25
) -> tuple[str, str]:
    """(tenant id, dataset id) of a ready dataset ingested through the ingestion job."""
    params = {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    tenant_id, dataset_id, _ = ingest_sample(source, per_class, params)
    return tenant_id, dataset_id


def run_model(tenant_id: str, dataset_id: str, **request) -> dict:
    from core.db import session_scope
    from core.models import create_model
    from core.tables import Model
    from workers.jobs.finetune import finetune_job
    from workers.jobs.fit import fit_job
    from workers.plan import training_params

    with session_scope() as s:
        spec, digest, params = training_params(
            request["strategy"],
            request["backbone"],
            head=request.get("head") or {},
            finetune=request.get("finetune") or {},
            seed=int(request.get("seed", 0)),
            allow_random_weights=False,
            tenant_id=tenant_id,
        )
        model, job = create_model(
            s,
            tenant_id,
            dataset_id=dataset_id,
            version=None,
            backbone=request["backbone"],
            architecture=spec.name,
            weights_digest=digest,
            strategy=request["strategy"],
            params=params,
            queue="cpu",
        )
        model_id, job_id = model.id, job.id
    start = time.perf_counter()
    body = finetune_job if request["strategy"] == "finetune" else fit_job
    out = run_job_here(job_id, body)
    with session_scope() as s:
        m = s.get(Model, model_id)
        return {
            "test_accuracy": round(m.metrics["accuracy"], 4),
            "macro_f1": round(m.metrics["macro_f1"], 4),
            "train_accuracy": round(m.metrics["train_accuracy"], 4),
            "seconds": round(time.perf_counter() - start, 1),
            **({"best_epoch": out["best_epoch"], "data_path": out["data_path"]} if "best_epoch" in out else {}),
            **({"probe_accuracy": round(m.metrics["probe_accuracy"], 4)} if "probe_accuracy" in m.metrics else {}),
            **({"epoch0_val_acc": out["initial"].get("val_acc")} if out.get("initial") else {}),
            **({"refit_on_val": out["refit_on_val"]} if "refit_on_val" in out else {}),
            **({"seconds_per_epoch": out["seconds_per_epoch"]} if "seconds_per_epoch" in out else {}),
            **({"refit_seconds": round(out["refit"]["seconds"], 1)} if out.get("refit") else {}),
        }


def run_row(tenant_id: str, dataset_id: str, finetune: dict | None, seed: int) -> dict:
    """One row of a comparison table: the linear probe (``finetune`` None) or a fine-tune with these settings."""
    return run_model(
        tenant_id,
        dataset_id,
        backbone="efficientnet_lite0",
        strategy="linear_probe" if finetune is None else "finetune",
        head={} if finetune is None else None,
        finetune=None if finetune is None else {**finetune, "seed": seed},
        seed=seed,
    )


def baselines(tenant_id: str, dataset_id: str) -> dict:
    """Plain scikit-learn on the same cached features and split, and on raw pixels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from core import datasets as ds
    from core.db import session_scope
    from core.features import labelled_features
    from core.storage import get_storage
    from core.tables import FeatureSet

    with session_scope() as s:
        fs = s.query(FeatureSet).filter_by(dataset_id=dataset_id, backbone="efficientnet_lite0").one()
        data = labelled_features(s, fs, fs.version_id)
        rows = {r.sha256: r for r in ds.version_images(s, fs.version_id)}
    fit = data["splits"] != "test"
    plain = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    plain.fit(data["features"][fit], data["labels"][fit])
    plain_acc = float(np.mean(plain.predict(data["features"][~fit]) == data["labels"][~fit]))

    from PIL import Image

    storage = get_storage()
    pixels = np.stack(
        [
            np.asarray(
                Image.open(__import__("io").BytesIO(storage.get_bytes(rows[h].canonical_key))).convert("L"),
                dtype=np.float32,
            ).ravel()
            / 255.0
            for h in data["sha256"]
        ]
    )
    raw = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
    raw.fit(pixels[fit], data["labels"][fit])
    raw_acc = float(np.mean(raw.predict(pixels[~fit]) == data["labels"][~fit]))
    return {"plain_sklearn_logistic_on_same_features": round(plain_acc, 4), "logistic_on_raw_pixels": round(raw_acc, 4)}


def probe_report(source: str, per_class: int) -> dict:
    tenant_id, dataset_id = make_dataset(source, per_class)
    probe = run_model(
        tenant_id, dataset_id, backbone="efficientnet_lite0", strategy="linear_probe", head={}, finetune=None
    )
    return {"images": per_class * 10, "linear_probe": probe, **baselines(tenant_id, dataset_id)}


# The LP-FT comparison: every fine-tune keeps the service's defaults (probe start, lr 1e-3 with warm-up +
# cosine, discriminative rates, BatchNorm in eval mode) but for what the row names.
LPFT_ROWS: dict[str, dict | None] = {
    "linear_probe": None,
    "finetune_head_lpft": {"epochs": 5, "unfreeze": "head"},
    "finetune_last1_augmented_lpft": {"epochs": 3, "unfreeze": "last:1", "augment": ["hflip", "crop"]},
    "finetune_head_random_init": {"epochs": 5, "unfreeze": "head", "head_init": "random"},
}


def lpft_report(source: str, per_class: int, seeds: int) -> dict:
    """Each row's test accuracy per seed and its mean ± sd; fine-tunes also carry their own probe's."""
    runs: dict[str, list[dict]] = {name: [] for name in LPFT_ROWS}
    for seed in range(seeds):
        tenant_id, dataset_id = make_dataset(source, per_class, seed=seed, val_fraction=0.15, test_fraction=0.3)
        for name, finetune in LPFT_ROWS.items():
            runs[name].append(run_row(tenant_id, dataset_id, finetune, seed))
            print(name, seed, runs[name][-1], flush=True)
    return {
        "source": source,
        "images": per_class * 10,
        "split": "55/15/30 stratified",
        "seeds": seeds,
        **_table(runs, LPFT_ROWS),
    }


# Issue-sized comparison on Fashion-MNIST's own test set: one pool of training images (drawn once), the full
# 10,000-image t10k set as the test split, and per seed a fresh stratified train/val split of the pool and
# training seed. Every fine-tune keeps the service's defaults (probe start, warm-up + cosine, discriminative
# rates) but for what the row names.
TEST10K_ROWS: dict[str, dict | None] = {
    "linear_probe": None,
    "finetune_head_augmented": {"epochs": 2, "unfreeze": "head", "augment": ["hflip"]},
    "finetune_last1_augmented": {"epochs": 3, "unfreeze": "last:1", "augment": ["hflip"]},
    "finetune_gradual_augmented": {"epochs": 4, "unfreeze": "gradual", "augment": ["hflip"]},
}


def official_split_zip(train_per_class: int, test_images: int) -> bytes:
    """One folder per class: ``train_*`` images drawn from Fashion-MNIST's training set (seed 0), ``test_*``
    the first ``test_images`` of its t10k set (all 10,000 by default)."""
    import io
    import zipfile

    from core.sample_data import FASHION_CLASSES, encode_png, fashion_mnist, stratified_subset

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        images, labels = fashion_mnist("train")
        for idx in stratified_subset(labels, train_per_class, seed=0):
            zf.writestr(f"{FASHION_CLASSES[labels[idx]]}/train_{idx:05d}.png", encode_png(images[idx]))
        images, labels = fashion_mnist("t10k")
        for idx in range(min(test_images, len(labels))):
            zf.writestr(f"{FASHION_CLASSES[labels[idx]]}/test_{idx:05d}.png", encode_png(images[idx]))
    return buf.getvalue()


def official_split_dataset(archive: bytes, seed: int) -> tuple[str, str, dict]:
    """(tenant id, dataset id, split sizes): the archive ingested with a seeded 15 % validation split, then
    every ``test_*`` image moved to the test split and every other one kept in train or val."""
    from collections import Counter

    from core.db import session_scope
    from core.tables import Dataset, DatasetVersion, Image

    tenant_id, dataset_id, _ = ingest_sample(
        "fashion", 0, {"val_fraction": 0.15, "test_fraction": 0.0, "seed": seed}, archive=archive
    )
    with session_scope() as s:
        version = s.query(DatasetVersion).join(Dataset).filter(Dataset.id == dataset_id).one()
        rows = s.query(Image).filter_by(version_id=version.id).all()
        for row in rows:
            if row.filename.rsplit("/", 1)[-1].startswith("test_"):
                row.split = "test"
        counts = Counter(row.split for row in rows)
        version.splits = {k: counts.get(k, 0) for k in ("train", "val", "test")}
        return tenant_id, dataset_id, dict(version.splits)


def test10k_report(train_per_class: int, test_images: int, seeds: int) -> dict:
    """Each row's test accuracy per seed and its mean ± sd, written after every seed (a long run that is
    stopped keeps what it measured)."""
    archive = official_split_zip(train_per_class, test_images)
    runs: dict[str, list[dict]] = {name: [] for name in TEST10K_ROWS}
    out: dict = {}
    for seed in range(seeds):
        tenant_id, dataset_id, sizes = official_split_dataset(archive, seed)
        for name, finetune in TEST10K_ROWS.items():
            row = run_row(tenant_id, dataset_id, finetune, seed)
            runs[name].append(row)
            print(name, seed, row, flush=True)
        out = {
            "source": "fashion",
            "pool": f"{train_per_class} Fashion-MNIST training images per class (seed 0), split per seed",
            "split_sizes": sizes,
            "seeds": seed + 1,
            **_table(runs, TEST10K_ROWS),
        }
        _save_section("test10k", out)
    return out


TTA_ROWS: dict[str, dict | None] = {
    "linear_probe": None,
    "finetune_head_augmented": TEST10K_ROWS["finetune_head_augmented"],
}


def tta_report(train_per_class: int, test_images: int) -> dict:
    """Test-time augmentation (``tta=hflip``) through the predict path's own computation
    (``inference.predict_images``): each model's test accuracy without and with it, on seed 0's test10k split."""
    from core import datasets as ds
    from core.db import session_scope
    from core.storage import get_storage
    from core.tables import Model
    from workers.runtime.inference import predict_images
    from workers.runtime.serving import PREDICTORS

    tenant_id, dataset_id, sizes = official_split_dataset(official_split_zip(train_per_class, test_images), 0)
    out: dict = {"split_sizes": sizes, "backbone": "efficientnet_lite0"}
    storage = get_storage()
    for name, finetune in TTA_ROWS.items():
        row = run_row(tenant_id, dataset_id, finetune, 0)
        with session_scope() as s:
            model = s.query(Model).filter_by(dataset_id=dataset_id).order_by(Model.created_at.desc()).first()
            test = [(r.canonical_key, r.label) for r in ds.version_images(s, model.version_id) if r.split == "test"]
            model_id = model.id
        predictor = PREDICTORS.get(tenant_id, model_id)
        labels, truth = np.array(predictor.labels), np.array([label for _, label in test])
        scores = {}
        for tta in ((), ("hflip",)):
            start, preds = time.perf_counter(), []
            for i in range(0, len(test), 64):
                images = [storage.get_bytes(key) for key, _ in test[i : i + 64]]
                preds.append(labels[predict_images(predictor, images, tta).argmax(axis=1)])
            scores["+".join(tta) or "none"] = {
                "test_accuracy": round(float(np.mean(np.concatenate(preds) == truth)), 4),
                "ms_per_image": round((time.perf_counter() - start) * 1000 / len(test), 2),
            }
        out[name] = {"model_test_accuracy": row["test_accuracy"], "tta": scores}
        print(name, out[name], flush=True)
    _save_section("tta", out)
    return out


def _table(runs: dict[str, list[dict]], settings: dict[str, dict | None]) -> dict:
    table = {}
    for name, rows in runs.items():
        acc = np.array([r["test_accuracy"] for r in rows])
        table[name] = {
            "settings": settings[name] or {"head": "logistic, C by cross-validation"},
            "test_accuracy_mean": round(float(acc.mean()), 4),
            "test_accuracy_sd": round(float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, 4),
            "runs": rows,
        }
    return table


def _save_section(section: str, value: dict) -> None:
    """Write ``section`` into the result file, keeping the other sections of earlier runs; each section
    names the commit it was measured with (the file's own header is that of the last writer)."""
    import os

    from common import code_version

    previous = RESULTS / "quality.json"
    kept = json.loads(previous.read_text()) if previous.exists() else {}
    kept = {k: v for k, v in kept.items() if k not in ("machine", "code", "load_average_1m_at_end", section)}
    stamp = {"commit": code_version()["commit"][:10], "load_average_1m": round(os.getloadavg()[0], 2)}
    write_result("quality", {**kept, section: {**value, "measured_with": stamp}})


SECTIONS = ("probe", "lpft", "test10k", "tta")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run these sections (default: all)")
    parser.add_argument("--fashion-per-class", type=int, default=300)
    parser.add_argument("--lpft-per-class", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the LP-FT comparison")
    parser.add_argument("--pool-per-class", type=int, default=118, help="test10k: training pool per class")
    parser.add_argument("--test-images", type=int, default=10_000, help="test10k: images of t10k in the test split")
    parser.add_argument("--test10k-seeds", type=int, default=3)
    parser.add_argument("--tta-test-images", type=int, default=2000, help="tta: t10k images in the test split")
    args = parser.parse_args()
    sections = args.only or SECTIONS
    isolated_env()
    from core.sample_data import digits, fashion_available

    if "probe" in sections:
        _save_section("digits", probe_report("digits", min(174, int(np.bincount(digits()[1]).min()))))
        if fashion_available():
            _save_section("fashion_mnist", probe_report("fashion", args.fashion_per_class))
    if "lpft" in sections:
        source = "fashion" if fashion_available() else "digits"
        section = "lpft" if args.lpft_per_class == 40 else f"lpft_{args.lpft_per_class * 10}"
        _save_section(section, lpft_report(source, args.lpft_per_class, args.seeds))
    if "test10k" in sections:
        if not fashion_available():
            raise SystemExit("test10k needs Fashion-MNIST: make sample-data")
        test10k_report(args.pool_per_class, args.test_images, args.test10k_seeds)
    if "tta" in sections:
        tta_report(args.pool_per_class, args.tta_test_images)


if __name__ == "__main__":
    main()
