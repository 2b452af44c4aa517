"""A bounded loopback load test of the prediction endpoint (issue 10, item 8).

A logistic probe is fitted on efficientnet_lite0 features of real images (as ``bench_predict.py`` does);
then ``tlserve api`` runs as its own process on 127.0.0.1 and is sent, by httpx clients on threads,
single-image predictions of real Fashion-MNIST images (digits without the package) enlarged to 300x300 PNG:
2,000 at concurrency 16, then 400 at concurrency 64. Reported per phase: p50/p99 of answered requests,
throughput, 200s, shed responses (503 ``overloaded``, 429 ``rate_limited``), other non-2xx, timeouts and
dropped connections; and the API process's RSS from after warm-up to the end (target: < 100 MB growth,
no 5xx but shed 503s, no timeouts). Every phase is bounded in count and in time; the machine's load
average is recorded beside the figures, since other work on the machine competes for its cores.

    .venv/bin/python benchmarks/bench_load.py                 # 2000 @ 16, then 400 @ 64
    .venv/bin/python benchmarks/bench_load.py --scale 0.1     # a quick look
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from bench_predict import train_probe
from common import ROOT, api_server, isolated_env, rate_limit_storage, write_result

PHASE_LIMIT_S = 300.0  # a phase stops sending after this long, whatever is left
REQUEST_TIMEOUT_S = 30.0
RSS_TARGET_MB = 100.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """The server's RSS every ``every_s`` on a thread (for the peak); ``now()`` for a reading at once."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, rss_mb(self.pid))

    def now(self) -> float:
        value = rss_mb(self.pid)
        self.peak = max(self.peak, value)
        return value

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def images_300px(n: int) -> list[tuple[str, bytes]]:
    from PIL import Image

    from core.sample_data import default_source, iter_labelled_pngs

    out = []
    for name, _, data in iter_labelled_pngs(default_source(), max(1, n // 10), seed=4242):
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((300, 300), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append((name, buf.getvalue()))
    return out[:n]


def phase(base: str, key: str, model_id: str, images: list[tuple[str, bytes]], n: int, conc: int) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + PHASE_LIMIT_S
    lock = threading.Lock()
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()

    def worker(w: int) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
            for i in range(w, n, conc):
                if time.monotonic() > deadline:
                    with lock:
                        outcomes["not_sent_time_limit"] += 1
                    continue
                name, data = images[i % len(images)]
                start = time.perf_counter()
                try:
                    resp = client.post(f"/v1/models/{model_id}/predict", files=[("files", (name, data, "image/png"))])
                except httpx.TimeoutException:
                    outcome = "timeout"
                except httpx.TransportError:
                    outcome = "dropped"
                else:
                    outcome = str(resp.status_code)
                    if resp.status_code in (429, 503):
                        try:
                            outcome += f" {resp.json()['error']['code']}"
                        except (ValueError, KeyError, TypeError):
                            outcome += " (not the JSON error contract)"
                elapsed = time.perf_counter() - start
                with lock:
                    outcomes[outcome] += 1
                    if outcome == "200":
                        latencies.append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        list(pool.map(worker, range(conc)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    shed = {k: v for k, v in outcomes.items() if k in ("503 overloaded", "429 rate_limited")}
    other = {k: v for k, v in outcomes.items() if k not in ("200", "timeout", "dropped") and k not in shed}
    return {
        "requests": n,
        "concurrency": conc,
        "ok_200": outcomes["200"],
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "ok_per_s": round(outcomes["200"] / wall, 1),
        "answered_per_s": round((sum(outcomes.values()) - outcomes["not_sent_time_limit"]) / wall, 1),
        "wall_s": round(wall, 1),
        "shed": shed,
        "other_non_2xx": other,
        "timeouts": outcomes["timeout"],
        "dropped_connections": outcomes["dropped"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the request counts (1.0: 2000 and 400)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    data_dir = isolated_env()
    from core.db import session_scope
    from core.tenancy import create_api_key

    _, model_id = train_probe()
    with session_scope() as s:
        key = create_api_key(s, "bench")
    images = images_300px(50)
    with api_server(data_dir) as (base, server), RssSampler(server.pid) as rss:
        rss_start = rss.now()
        # warm-up at the highest concurrency: loads the engine and head and grows the batch buffers to the
        # largest micro-batch, so that the growth measured after it is what the load itself leaves behind
        warm = phase(base, key, model_id, images, 256, 64)
        rss_warm = rss.now()
        c16 = phase(base, key, model_id, images, int(2000 * args.scale), 16)
        rss_c16 = rss.now()
        c64 = phase(base, key, model_id, images, int(400 * args.scale), 64)
        rss_end = rss.now()
        peak = rss.peak
    growth = rss_end - rss_warm
    bad_5xx = sum(v for p in (c16, c64) for k, v in p["other_non_2xx"].items() if k.startswith("5"))
    write_result(
        "load",
        {
            "backbone": "efficientnet_lite0",
            "head": "logistic",
            "rate_limit_storage": "redis" if rate_limit_storage().startswith("redis") else "memory",
            "image": "300x300 PNG (a real Fashion-MNIST image enlarged), one per request",
            "server": "tlserve api (uvicorn, one process), jobs in-process (memory://), SQLite",
            "note": (
                "the warm-up runs at concurrency 64, so that ONNX Runtime's CPU memory arena has grown to the "
                "largest micro-batch (about 600 MB for efficientnet_lite0 at batch 32) before growth is measured"
            ),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "warm_up": {k: warm[k] for k in ("requests", "ok_200", "p50_ms")},
            "concurrency_16": c16,
            "concurrency_64": c64,
            "api_rss_mb": {
                "start": round(rss_start, 1),
                "after_warm_up": round(rss_warm, 1),
                "after_c16": round(rss_c16, 1),
                "end": round(rss_end, 1),
                "peak": round(peak, 1),
                "growth_after_warm_up": round(growth, 1),
            },
            "targets": {"rss_growth_mb": f"< {RSS_TARGET_MB:g}", "5xx_other_than_shed": 0, "timeouts": 0},
            "met": {
                "rss_growth": growth < RSS_TARGET_MB,
                "no_other_5xx": bad_5xx == 0,
                "no_timeouts": c16["timeouts"] + c64["timeouts"] == 0,
            },
        },
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
