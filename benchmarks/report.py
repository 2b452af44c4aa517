"""Write ``benchmarks/RESULTS.md`` from the result files in ``benchmarks/results/``: every figure in it comes
from a JSON file that a benchmark wrote (``make bench`` runs them all, then this), with the commit, machine
and load it ran under. Nothing here is typed in by hand but the descriptions, which carry no figures.

    .venv/bin/python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name → (command, what it measures and against what). No figures here: they come from the JSON.
DESCRIBE: dict[str, tuple[str, str]] = {
    "ingest": (
        "bench_ingest.py --images 3000",
        "The ingestion job on real Fashion-MNIST images, at their own 28 px and enlarged to 300 × 300 PNGs, "
        "with 1 and 2 decode threads (target: at least 300 images/s on the 300 px PNGs).",
    ),
    "first_model": (
        "bench_first_model.py --images 600",
        "Upload → ready linear probe on a freshly started `tlserve up` (Redis, a Celery worker), after install "
        "(no graph cache) and on a fresh data folder of an installation where `tlserve warm` ran, against a "
        "plain torch script that only extracts the same images' features, at its best thread count "
        "(target: the service at most 0.5× the script).",
    ),
    "extract": (
        "bench_extract.py --images 1000 --memory",
        "The extraction job against the bare engine forward at the same threads and a naive ImageFolder + "
        "DataLoader + eager torch script; a worker's peak memory at 1k and 10k images.",
    ),
    "shards": (
        "bench_shards.py --images 2000",
        "One extraction split into 512-image shards: 2 workers, each one process pinned to its own core, against "
        "1 such worker, and against an unsharded job on 1 worker; seconds, images/s and the workers' CPU-seconds "
        "per image (target: 2 workers at least 1.7× one). Other engineers' processes shared the 2 cores: see "
        "the load average.",
    ),
    "head_fit": ("bench_head_fit.py", "The logistic head with its C search against a plain GridSearchCV."),
    "predict": (
        "bench_predict.py --requests 200",
        "Predict latency over loopback HTTP at concurrency 1 and 8 against the bare in-process path, one "
        "image at a time and in batches of 8 at the same threads (targets: p50 at concurrency 1 at most "
        "1.15× bare; throughput at 8 at least 0.9× the bare batched one); the CPU share of the load "
        "generator and of the server during each HTTP run.",
    ),
    "load": (
        "bench_load.py",
        "The API under load: 2,000 single-image predictions at concurrency 16, then 400 at 64; shed "
        "responses, errors, timeouts and the API's memory growth after warm-up (target under 100 MB).",
    ),
    "search": (
        "bench_search.py --vectors 10000",
        "Similarity search on real features: exact search against FAISS HNSW and usearch HNSW at the same "
        "graph degree; queries/s and recall@10 (target at least 0.95).",
    ),
    "finetune": ("bench_finetune.py", "Fine-tuning epoch time against a plain PyTorch loop; cached vs augmented."),
    "quality": (
        "bench_quality.py",
        "Held-out accuracy on real images: linear probe against plain scikit-learn and raw pixels; "
        "fine-tuning (LP-FT, the defaults) against the probe on Fashion-MNIST's own 10,000-image test set "
        "(test10k; target: no row more than 0.5 points below the probe on the mean); test-time augmentation "
        "(tta). Each section names the commit it was measured with.",
    ),
    "active": (
        "bench_active.py",
        "Accuracy after adding labels chosen by each suggestion strategy against randomly chosen ones.",
    ),
}

CONTEXT = ("machine", "code", "load_average_1m_at_end")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list | dict):
        return "`" + json.dumps(value, separators=(", ", ": ")) + "`"
    return str(value).replace("|", "\\|")


def _rows(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_rows(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            continue  # rendered as its own table
        else:
            rows.append((name, value))
    return rows


def _tables(data: dict[str, Any], prefix: str = "") -> list[tuple[str, list[dict[str, Any]]]]:
    found = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            found.append((f"{prefix}{key}", value))
        elif isinstance(value, dict):
            found.extend(_tables(value, f"{prefix}{key}."))
    return found


def _provenance(data: dict[str, Any]) -> str:
    machine = data.get("machine", {})
    code = data.get("code")
    if code:
        commit = f"commit `{code['commit'][:10]}`" + (" with uncommitted changes" if code.get("dirty") else "")
    else:
        commit = "commit not recorded (written before result files carried it)"
    load = data.get("load_average_1m_at_end")
    where = f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, Python {machine.get('python', '?')}"
    return f"{commit}; {where}" + (f"; load average {load} at the end" if load is not None else "")


def section(name: str, data: dict[str, Any]) -> str:
    command, what = DESCRIBE.get(name, (f"bench_{name}.py", ""))
    lines = [f"## {name} (`{command}`)", "", what, "", f"*{_provenance(data)}*", ""]
    figures = {k: v for k, v in data.items() if k not in CONTEXT}
    rows = _rows(figures)
    if rows:
        lines += ["| figure | value |", "| --- | --- |"] + [f"| {k} | {_cell(v)} |" for k, v in rows] + [""]
    for title, items in _tables(figures):
        columns = list(dict.fromkeys(k for item in items for k in item))
        lines += [f"`{title}`:", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(_cell(item.get(c, "")) for c in columns) + " |" for item in items] + [""]
    return "\n".join(lines)


def main() -> None:
    known = [n for n in DESCRIBE if (RESULTS / f"{n}.json").exists()]
    others = sorted(p.stem for p in RESULTS.glob("*.json") if p.stem not in DESCRIBE)
    parts = [
        "# Measured figures",
        "",
        "Written by `benchmarks/report.py` from `benchmarks/results/*.json` (`make bench` runs every benchmark, "
        "then the report); do not edit by hand. Each benchmark runs its baseline in the same run, so ratios "
        "inside one section are comparable; figures of different sections may come from different commits "
        "and loads, given under each heading.",
        "",
    ]
    parts += [section(n, json.loads((RESULTS / f"{n}.json").read_text())) for n in [*known, *others]]
    (HERE / "RESULTS.md").write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {HERE / 'RESULTS.md'} from {len(known) + len(others)} result files")


if __name__ == "__main__":
    main()
