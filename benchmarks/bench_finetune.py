"""Fine-tuning epoch time on real images (Fashion-MNIST, else scikit-learn's digits), in one run:

1. ``finetune`` on the augmented path (the frozen base re-runs every batch) against a plain, hand-written
   PyTorch loop on the same decoded images, model, frozen layers, optimizer, batch size and threads
   (target: ≤ 1.1×). Both epochs include the validation pass.
2. The cached path (the frozen base runs once; epochs only train the tail) against the augmented path.

Runs are interleaved and the median epoch is reported (the first epoch of each run is a warm-up).

    .venv/bin/python benchmarks/bench_finetune.py --train 512 --val 128 --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from common import write_result


def load_images(train: int, val: int) -> tuple[str, Any, Any]:
    """Stratified, disjoint train/val ``Samples`` of real images."""
    import numpy as np

    from core.sample_data import default_source, digits, fashion_mnist, stratified_subset
    from workers.training import Samples

    source = default_source()
    images, labels = fashion_mnist("train") if source == "fashion" else digits()
    idx = stratified_subset(labels, -(-(train + val) // 10), seed=0)
    np.random.default_rng(0).shuffle(idx)
    names = [str(c) for c in range(10)]
    cut = len(idx) * train // (train + val)

    def samples(part: Any) -> Samples:
        return Samples([images[i] for i in part], [int(labels[i]) for i in part], classes=names)

    return source, samples(idx[:cut]), samples(idx[cut:])


def plain_loop_epochs(spec: Any, train: Any, val: Any, cfg: Any, epochs: int) -> list[float]:
    """What one writes by hand: normalised float tensors made once, the same model with the last stage and
    the new head trainable (frozen BN in eval), AdamW, a shuffled index per epoch, then a validation pass."""
    import torch
    import torch.nn.functional as F

    from workers.backbones import load_model
    from workers.training.augment import batch_transform
    from workers.training.data import decode

    torch.manual_seed(cfg.seed)
    norm = batch_transform(spec.preprocessing, train=False)
    x_train, x_val = norm(decode(train, spec.preprocessing)), norm(decode(val, spec.preprocessing))
    y_train, y_val = torch.tensor(train.labels), torch.tensor(val.labels)
    model = load_model(spec)  # pretrained when the weights are there, else the same seeded random weights
    model.reset_classifier(10)
    model.requires_grad_(False)
    stages = model.stages()
    trainable = [stages[-1], model.classifier]
    for module in trainable:
        module.requires_grad_(True)
    params = [p for m in trainable for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.resolved_lr(), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for stage in stages[:-1]:
            stage.eval()
        order = torch.randperm(len(y_train), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, len(y_val), 2 * cfg.batch_size):
                F.cross_entropy(model(x_val[i : i + 2 * cfg.batch_size]), y_val[i : i + 2 * cfg.batch_size])
        times.append(time.perf_counter() - start)
    return times


def finetune_epochs(spec: Any, train: Any, val: Any, cfg: Any, device: str) -> tuple[list[float], float]:
    """(epoch seconds, total seconds including decode and the cache pass)."""
    from workers.training import finetune

    start = time.perf_counter()
    result = finetune(spec, train, val, cfg, device=device)
    total = time.perf_counter() - start
    return [row["seconds"] for row in result.history], total


def median_after_warmup(times: list[float], per_run: int) -> float:
    """Median epoch, leaving out the first epoch of every run."""
    return statistics.median([t for i, t in enumerate(times) if i % per_run != 0] or times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--val", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is a warm-up")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the worker setting)")
    parser.add_argument("--device", default="cpu", help="cpu compares with the plain loop; cuda only the paths")
    args = parser.parse_args()

    import torch

    from core.settings import get_settings
    from workers.backbones import get_backbone, weights_available
    from workers.training import FinetuneConfig

    threads = args.threads or get_settings().torch_threads
    torch.set_num_threads(threads)
    spec = get_backbone(args.backbone)
    source, train, val = load_images(args.train, args.val)
    base = {"epochs": args.epochs, "batch_size": args.batch_size, "unfreeze": "last:1", "early_stopping_patience": 0}
    base |= {"refit": False}  # epoch speed is what is measured: no second run on train + val
    augmented_cfg = FinetuneConfig(**base, data_path="augmented")
    cached_cfg = FinetuneConfig(**base, data_path="cached")

    on_cpu = args.device == "cpu"
    plain = plain_loop_epochs(spec, train, val, augmented_cfg, args.epochs) if on_cpu else []
    augmented, _ = finetune_epochs(spec, train, val, augmented_cfg, args.device)
    if on_cpu:  # interleaved, so that a change in machine load hits both sides
        plain += plain_loop_epochs(spec, train, val, augmented_cfg, args.epochs)
        more, _ = finetune_epochs(spec, train, val, augmented_cfg, args.device)
        augmented += more
    cached, cached_total = finetune_epochs(spec, train, val, cached_cfg, args.device)

    aug_epoch = median_after_warmup(augmented, args.epochs)
    cached_epoch = median_after_warmup(cached, args.epochs)
    result: dict[str, Any] = {
        "command": "benchmarks/bench_finetune.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "source": source,
        "backbone": spec.name,
        "input_size": spec.preprocessing.input_size,
        "pretrained": weights_available(spec),
        "unfreeze": "last:1",
        "train_images": len(train),
        "val_images": len(val),
        "batch_size": args.batch_size,
        "torch_threads": threads,
        "device": str(torch.cuda.get_device_name()) if args.device.startswith("cuda") else args.device,
        "augmented_epoch_s": round(aug_epoch, 3),
        "cached_epoch_s": round(cached_epoch, 4),
        "cached_one_time_s": round(cached_total - sum(cached), 2),
        "augmented_over_cached": round(aug_epoch / cached_epoch, 1),
    }
    if plain:
        plain_epoch = median_after_warmup(plain, args.epochs)
        result["plain_loop_epoch_s"] = round(plain_epoch, 3)
        result["finetune_over_plain"] = round(aug_epoch / plain_epoch, 3)
    write_result("finetune" if on_cpu else "finetune_cuda", result)


if __name__ == "__main__":
    main()
