"""The reaper: the loop that makes the job row, not the broker, the source of truth.

Every ``reaper_interval_s`` it
* puts back in the queue every running job whose lease expired (its worker was killed or its machine
  died), and
* sends again every job queued for longer than ``queued_grace_s`` that has no message in the broker
  (the broker was down when it was submitted, or restarted and lost its queue): the transactional outbox,
  the database being the outbox.

It runs as a thread in every worker's main process (so wherever workers run, ``tlserve up`` included) and
in the API process when jobs run in-process (``memory://``). Several reapers at once are harmless: rows
are claimed with ``SKIP LOCKED`` and a duplicate message finds the job already taken.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from typing import Any

from core import jobs
from core.settings import get_settings
from workers.dispatch import enqueue, local_pending

log = logging.getLogger(__name__)

_JOB_ID = re.compile(rb"job_[0-9a-f]{20}")
PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: "<queue>\x06\x16<priority>" for priorities 1..9


def _ids_in(raw: bytes) -> set[str]:
    """Job ids named in one stored kombu message (its body is base64 JSON)."""
    found = {m.decode() for m in _JOB_ID.findall(raw)}
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the unacked hash stores [message, exchange, routing key]
            message = message[0]
        body = base64.b64decode(message.get("body", ""))
        found |= {m.decode() for m in _JOB_ID.findall(body)}
    except (ValueError, TypeError, AttributeError, KeyError):
        pass
    return found


def live_job_ids(queues: tuple[str, ...] = ("cpu", "gpu")) -> tuple[set[str], set[str]] | None:
    """(job ids with a message waiting in a queue, job ids whose message a worker holds unacknowledged), or
    ``None`` when the broker cannot be read (then nothing is sent again: better late than twice)."""
    settings = get_settings()
    if settings.broker_is_memory:
        return local_pending(), set()
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=3, socket_timeout=5)
    try:
        waiting: set[str] = set()
        for queue in queues:
            for name in [queue] + [f"{queue}{PRIORITY_SEP}{p}" for p in range(1, 10)]:
                for raw in client.lrange(name, 0, -1):
                    waiting |= _ids_in(raw)
        held: set[str] = set()
        for raw in client.hvals("unacked"):
            held |= _ids_in(raw)
        return waiting, held
    except redis.RedisError as exc:
        log.info("reaper: broker unreachable (%s); nothing re-sent this round", type(exc).__name__)
        return None
    finally:
        client.close()


def _send(job_ids: list[str], kinds: dict[str, tuple[str, str]]) -> list[str]:
    sent = []
    for job_id in job_ids:
        kind, queue = kinds[job_id]
        try:
            enqueue(job_id, kind, queue)
        except Exception as exc:  # the broker is down: the next round tries again
            log.info("reaper: could not send job %s (%s)", job_id, type(exc).__name__)
            break
        sent.append(job_id)
    jobs.mark_sent(sent)
    return sent


def reap_once() -> dict[str, list[str]]:
    """One round; returns the ids put back from expired leases and the ids sent again."""
    requeued = jobs.requeue_expired()
    # A dead worker's message stays "unacked" in Redis until the visibility timeout: send a new one now.
    resent = _send([j.id for j in requeued], {j.id: (j.kind, j.queue) for j in requeued})
    live = live_job_ids()
    if live is not None:
        waiting, held = live
        candidates = [
            j
            for j in jobs.unsent_queued()
            # a job put back by the reaper may still have its dead worker's message in "unacked"
            if j.id not in waiting and (j.enqueued_at is None or j.id not in held)
        ]
        resent += _send([j.id for j in candidates], {j.id: (j.kind, j.queue) for j in candidates})
    if requeued or resent:
        log.warning("reaper: %d job(s) back from expired leases, %d sent", len(requeued), len(resent))
    return {"requeued": [j.id for j in requeued], "resent": resent}


class Reaper:
    """``reap_once`` every ``reaper_interval_s`` on a daemon thread until ``stop()``."""

    def __init__(self, interval_s: float | None = None) -> None:
        self.interval_s = interval_s or get_settings().reaper_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tlserve-reaper", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                reap_once()
            except Exception:  # the database is down: try again next round
                log.warning("reaper round failed", exc_info=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> Reaper:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()
