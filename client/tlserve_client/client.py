"""``Client(url, api_key)``: typed methods over tlserve's REST API (v1), grouped by resource:
``client.datasets``, ``client.features``, ``client.models``, ``client.aliases``, ``client.jobs``,
``client.backbones``."""

from __future__ import annotations

import json
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

import httpx

from tlserve_client.archive import (
    BadPath,
    as_upload,
    dataset_members,
    image_files,
    is_zip,
    zip_to_tempfile,
)
from tlserve_client.errors import APIError, JobFailed, JobTimeout, ServiceUnreachable, TLServeError
from tlserve_client.sse import parse_events
from tlserve_client.types import (
    TERMINAL,
    Accepted,
    Alias,
    Backbone,
    Dataset,
    FeatureSet,
    Job,
    Model,
    Prediction,
)

__all__ = ["Client", "MAX_SYNC_FILES"]

MAX_SYNC_FILES = 64  # images per synchronous predict request (the service's default limit)
RETRY_STATUSES = (429, 503)  # refused before any work was done: safe to send again after Retry-After

EventCallback = Callable[[Job], None]
ByteCallback = Callable[[int, int], None]  # (bytes sent so far, total bytes)


class _CountingReader:
    """A binary file whose reads report progress; httpx streams it in chunks as the multipart body."""

    def __init__(self, fh: IO[bytes], total: int, callback: ByteCallback | None) -> None:
        self._fh, self._total, self._callback, self._sent = fh, total, callback, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        self._sent += len(chunk)
        if self._callback is not None and chunk:
            self._callback(self._sent, self._total)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._fh.seek(offset, whence)
        self._sent = position
        return position

    def tell(self) -> int:
        return self._fh.tell()

    def fileno(self) -> int:
        return self._fh.fileno()


def _safe_member(name: str) -> str:
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", "..", ".", "")]
    return "/".join(parts) or "image"


class _Resource:
    def __init__(self, client: Client) -> None:
        self._c = client


class Jobs(_Resource):
    def list(self) -> list[Job]:
        return cast(list[Job], self._c._list("/v1/jobs"))

    def get(self, job_id: str) -> Job:
        return cast(Job, self._c._json("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        return cast(Job, self._c._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: str, timeout: float | None = None) -> Iterator[Job]:
        """The job's states from its event stream (``GET /v1/jobs/{id}/events``), the last one final.

        A dropped stream is re-opened (the job's state is read again first); ``timeout`` bounds the whole.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Job | None = None
        while True:
            try:
                with self._c._stream("GET", f"/v1/jobs/{job_id}/events") as resp:
                    for event in parse_events(resp.iter_lines()):
                        if deadline is not None and time.monotonic() > deadline:
                            raise JobTimeout(job_id, timeout or 0, cast(dict, last))
                        if event is None or event.event != "job":
                            continue
                        last = cast(Job, json.loads(event.data))
                        yield last
                        if last["status"] in TERMINAL:
                            return
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout, ServiceUnreachable):
                pass  # the stream broke: fall through, read the state and open it again
            current = self.get(job_id)
            if current != last:
                last = current
                yield current
            if current["status"] in TERMINAL:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(job_id, timeout or 0, cast(dict, last))
            time.sleep(0.5)  # back off before re-opening a broken stream

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        """Follow the job until it ends; returns its final state. ``JobFailed`` when it failed or was
        cancelled (unless ``raise_on_failure=False``), ``JobTimeout`` past ``timeout`` seconds."""
        final: Job | None = None
        for job in self.events(job_id, timeout=timeout):
            if on_event is not None:
                on_event(job)
            final = job
        assert final is not None
        if raise_on_failure and final["status"] != "succeeded":
            raise JobFailed(cast(dict, final))
        return final


class Datasets(_Resource):
    def upload(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        *,
        val_fraction: float | None = None,
        test_fraction: float | None = None,
        seed: int | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_zip: ByteCallback | None = None,
        on_upload: ByteCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> Dataset:
        """Create a dataset from a folder (one sub-folder per class, or a ``labels.csv`` beside the images),
        a ``labels.csv`` file, or a zip. A folder or CSV is zipped file by file into a temporary file first.

        Returns ``{"id", "job_id", "status"}`` at once, or with ``wait=True`` the ingested dataset (class
        counts, splits, rejected files with reasons); ``JobFailed`` if ingestion failed. ``on_zip(files, total)``
        and ``on_upload(bytes, total)`` report progress of the zipping and the upload."""
        source = Path(path)
        if source.is_file() and is_zip(source):
            fh: IO[bytes] = source.open("rb")  # noqa: SIM115 - closed below
        else:
            members = dataset_members(source)
            counter = iter(range(1, len(members) + 1))
            on_file = None if on_zip is None else (lambda _name: on_zip(next(counter), len(members)))
            fh = zip_to_tempfile(members, on_file)
        name = name or source.stem or "dataset"
        form: dict[str, str] = {"name": name}
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction), ("seed", seed)):
            if value is not None:
                form[key] = str(value)
        with fh:
            total = os.fstat(fh.fileno()).st_size
            reader = _CountingReader(fh, total, on_upload)
            files = {"archive": (f"{Path(name).name or 'dataset'}.zip", reader, "application/zip")}
            accepted = cast(Accepted, self._c._json("POST", "/v1/datasets", data=form, files=files, retry=False))
        if not wait:
            return cast(Dataset, accepted)
        self._c.jobs.wait(accepted["job_id"], timeout=timeout, on_event=on_event)
        return self.get(accepted["id"])

    def add_images(self, dataset_id: str, images: Sequence[Any], labels: Sequence[str] | str) -> Accepted:
        """Add images (paths, bytes or PIL images) with one label each, or one label for all: a new version."""
        uploads = [as_upload(img, i) for i, img in enumerate(images)]
        files = [("files", (_safe_member(n), data, "application/octet-stream")) for n, data in uploads]
        form = {"labels": [labels] if isinstance(labels, str) else list(labels)}
        return cast(Accepted, self._c._json("POST", f"/v1/datasets/{dataset_id}/images", files=files, data=form))

    def label(self, dataset_id: str, labels: dict[str, str], split: str = "train") -> Accepted:
        """Label unlabelled images (image id → label): a new version with them in ``train`` (or, with
        ``split="stratified"``, in whichever split their class lacks). Returns the ingestion job."""
        body = {"labels": dict(labels), "split": split}
        return cast(Accepted, self._c._json("POST", f"/v1/datasets/{dataset_id}/labels", json=body))

    def list(self) -> list[Dataset]:
        return cast(list[Dataset], self._c._list("/v1/datasets"))

    def get(self, dataset_id: str, version: int | None = None) -> Dataset:
        params = {"version": version} if version is not None else None
        return cast(Dataset, self._c._json("GET", f"/v1/datasets/{dataset_id}", params=params))

    def delete(self, dataset_id: str) -> None:
        self._c._request("DELETE", f"/v1/datasets/{dataset_id}")


class Features(_Resource):
    def extract(
        self,
        dataset_id: str,
        backbone: str = "efficientnet_lite0",
        *,
        version: int | None = None,
        allow_random_weights: bool = False,
        queue: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
    ) -> FeatureSet:
        """Extract (or find in the cache: ``cached`` is true, no job) the features of every image."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "backbone": backbone}
        if version is not None:
            body["version"] = version
        if allow_random_weights:
            body["allow_random_weights"] = True
        if queue:
            body["queue"] = queue
        fs = cast(FeatureSet, self._c._json("POST", "/v1/features", json=body))
        if not wait or fs.get("cached") or not fs.get("job_id") or fs.get("status") == "ready":
            return fs
        self._c.jobs.wait(cast(str, fs["job_id"]), timeout=timeout, on_event=on_event)
        return {**self.get(fs["id"]), "cached": False}

    def list(self) -> list[FeatureSet]:
        return cast(list[FeatureSet], self._c._list("/v1/features"))

    def get(self, feature_set_id: str) -> FeatureSet:
        return cast(FeatureSet, self._c._json("GET", f"/v1/features/{feature_set_id}"))

    def search(
        self, feature_set_id: str, images: Sequence[Any] | Any = (), *, image_id: str | None = None, k: int = 10
    ) -> list[dict[str, Any]]:
        """The ``k`` nearest images of the feature set to each image (paths, bytes or PIL images), or to the
        set's image ``image_id``: one result per query, each with ``neighbours`` (``image_id``, ``file``,
        ``label``, ``split``, ``distance``) or an ``error``."""
        path = f"/v1/features/{feature_set_id}/search"
        if image_id is not None:
            return cast(
                list[dict[str, Any]], self._c._json("POST", path, data={"image_id": image_id, "k": str(k)})["results"]
            )
        if not isinstance(images, list | tuple):
            images = [images]
        files = [
            ("files", (name, data, "application/octet-stream"))
            for name, data in map(as_upload, images, range(len(images)))
        ]
        return cast(list[dict[str, Any]], self._c._json("POST", path, files=files, data={"k": str(k)})["results"])

    def near_duplicates(self, feature_set_id: str, threshold: float | None = None) -> list[dict[str, Any]]:
        """Test images whose nearest training image is within ``threshold`` (cosine distance): leakage."""
        params = {} if threshold is None else {"threshold": threshold}
        body = self._c._json("GET", f"/v1/features/{feature_set_id}/near-duplicates", params=params)
        return cast(list[dict[str, Any]], body["pairs"])

    def download(self, feature_set_id: str, dest: str | os.PathLike[str]) -> Path:
        """Save the features as an ``.npz`` (``features``, ``labels``, ``image_ids``); returns its path."""
        path = f"/v1/features/{feature_set_id}/download"
        return self._c._download(path, {"format": "npz"}, dest, f"{feature_set_id}.npz")


class Models(_Resource):
    def train(
        self,
        dataset_id: str,
        backbone: str = "efficientnet_lite0",
        *,
        strategy: str | None = None,
        head: dict[str, Any] | None = None,
        finetune: dict[str, Any] | None = None,
        version: int | None = None,
        allow_random_weights: bool = False,
        queue: str | None = None,
        seed: int | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
    ) -> Model:
        """Train a linear probe (default) or, given ``finetune`` settings, fine-tune the backbone.

        Returns ``{"id", "job_id", "status"}`` at once, or with ``wait=True`` the trained model and its
        test-split metrics; ``JobFailed`` if training failed."""
        body: dict[str, Any] = {
            "dataset_id": dataset_id,
            "backbone": backbone,
            "strategy": strategy or ("finetune" if finetune is not None else "linear_probe"),
        }
        for key, value in (("head", head), ("finetune", finetune), ("version", version), ("queue", queue)):
            if value is not None:
                body[key] = value
        if seed is not None:
            body["seed"] = seed
        if allow_random_weights:
            body["allow_random_weights"] = True
        accepted = cast(Accepted, self._c._json("POST", "/v1/models", json=body))
        if not wait:
            return cast(Model, accepted)
        self._c.jobs.wait(accepted["job_id"], timeout=timeout, on_event=on_event)
        return self.get(accepted["id"])

    def list(self) -> list[Model]:
        return cast(list[Model], self._c._list("/v1/models"))

    def get(self, model_id: str) -> Model:
        return cast(Model, self._c._json("GET", f"/v1/models/{model_id}"))

    def delete(self, model_id: str) -> None:
        self._c._request("DELETE", f"/v1/models/{model_id}")

    def predict(
        self, model_id: str, images: Sequence[Any] | Any, top_k: int = 3, tta: Sequence[str] = ()
    ) -> list[Prediction]:
        """Predictions for images given as paths, bytes, ``(name, bytes)`` pairs or PIL images, in order.
        A file that cannot be read gets an ``error`` instead of a label. Sent ``MAX_SYNC_FILES`` at a time.
        ``tta=["hflip"]`` (also ``"vflip"``) averages each image's probabilities with its mirror image's."""
        return self._c._predict(f"/v1/models/{model_id}/predict", images, top_k, tta)

    def suggest(self, model_id: str, k: int = 20, strategy: str = "margin") -> list[dict[str, Any]]:
        """The ``k`` unlabelled images of a linear probe's dataset to label first (``margin``, ``entropy`` or
        ``coreset``), best first: ``image_id``, ``file``, the predicted ``label`` and ``score``, ``value``."""
        params = {"k": k, "strategy": strategy}
        body = self._c._json("GET", f"/v1/models/{model_id}/suggestions", params=params)
        return cast(list[dict[str, Any]], body["suggestions"])

    def export(self, model_id: str, dest: str | os.PathLike[str], format: str = "onnx") -> Path:
        """Save the model as one self-contained ONNX graph (uint8 images in, class probabilities out; class
        names and preprocessing in its metadata); returns its path. ``dest`` may be a folder."""
        path = f"/v1/models/{model_id}/export"
        return self._c._download(path, {"format": format}, dest, f"{model_id}.{format}")

    def start_batch(
        self,
        model_id: str,
        images: Sequence[Any] | str | os.PathLike[str],
        top_k: int = 3,
        tta: Sequence[str] = (),
    ) -> Accepted:
        """Start a batch-prediction job: ``images`` is a zip file, or paths/folders/bytes/PIL images that
        are zipped into a temporary file first. Returns ``{"job_id", "status"}``."""
        return self._start_batch(model_id, images, top_k, tta)[0]

    def _start_batch(
        self, model_id: str, images: Any, top_k: int, tta: Sequence[str] = ()
    ) -> tuple[Accepted, dict[str, str]]:
        names: dict[str, str] = {}  # name in the zip -> the name the caller gave
        if isinstance(images, str | os.PathLike) and Path(images).is_file() and is_zip(Path(images)):
            fh: IO[bytes] = Path(images).open("rb")  # noqa: SIM115 - closed below
        else:
            fh, names = self._zip_images(images)
        with fh:
            files = {"archive": ("images.zip", fh, "application/zip")}
            form = _predict_form(top_k, tta)
            path = f"/v1/models/{model_id}/predictions"
            return cast(Accepted, self._c._json("POST", path, files=files, data=form)), names

    @staticmethod
    def _zip_images(images: Any) -> tuple[IO[bytes], dict[str, str]]:
        items = [images] if isinstance(images, str | os.PathLike) else list(images)
        paths = [i for i in items if isinstance(i, str | os.PathLike)]
        others = [i for i in items if not isinstance(i, str | os.PathLike)]
        found = image_files(paths) if paths else []
        names = {_safe_member(name): name for _, name in found}
        fh = zip_to_tempfile([(f, _safe_member(name)) for f, name in found])
        if others:
            with zipfile.ZipFile(fh, "a") as zf:
                for i, image in enumerate(others):
                    name, data = as_upload(image, i)
                    names[_safe_member(name)] = name
                    zf.writestr(_safe_member(name), data)
            fh.seek(0)
        return fh, names

    def batch_results(self, model_id: str, job_id: str) -> list[Prediction]:
        body = self._c._json("GET", f"/v1/models/{model_id}/predictions/{job_id}", params={"format": "json"})
        return cast(list[Prediction], body["predictions"])

    def batch_results_csv(self, model_id: str, job_id: str) -> str:
        resp = self._c._request("GET", f"/v1/models/{model_id}/predictions/{job_id}", params={"format": "csv"})
        return resp.text

    def predict_batch(
        self,
        model_id: str,
        images: Sequence[Any] | str | os.PathLike[str],
        top_k: int = 3,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
        on_start: Callable[[Accepted], None] | None = None,
        tta: Sequence[str] = (),
    ) -> list[Prediction]:
        """Predict a large set through a batch-prediction job: start it, wait for it, fetch its results
        (each ``file`` named as the caller gave it). ``on_start`` hears the job id as soon as it exists."""
        accepted, names = self._start_batch(model_id, images, top_k, tta)
        if on_start is not None:
            on_start(accepted)
        self._c.jobs.wait(accepted["job_id"], timeout=timeout, on_event=on_event)
        rows = self.batch_results(model_id, accepted["job_id"])
        for row in rows:
            row["file"] = names.get(row.get("file", ""), row.get("file", ""))
        return rows

    def compare(
        self,
        dataset_id: str,
        backbones: Sequence[str],
        *,
        head: dict[str, Any] | None = None,
        version: int | None = None,
        allow_random_weights: bool = False,
        seed: int | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
    ) -> Job:
        """A leaderboard of linear probes, one per backbone: the job (``metrics.leaderboard`` once done)."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "backbones": list(backbones)}
        if head is not None:
            body["head"] = head
        if version is not None:
            body["version"] = version
        if seed is not None:
            body["seed"] = seed
        if allow_random_weights:
            body["allow_random_weights"] = True
        accepted = self._c._json("POST", "/v1/compare", json=body)
        if not wait:
            return cast(Job, {"id": accepted["job_id"], **accepted})
        return self._c.jobs.wait(accepted["job_id"], timeout=timeout, on_event=on_event)


class Aliases(_Resource):
    """Stable names for models: an application predicts through ``aliases.predict("prod", ...)`` and a
    retrained model goes live with ``aliases.set("prod", new_model_id)``, with no change to its code."""

    def list(self) -> list[Alias]:
        return cast(list[Alias], self._c._list("/v1/aliases"))

    def get(self, name: str) -> Alias:
        return cast(Alias, self._c._json("GET", f"/v1/aliases/{name}"))

    def set(self, name: str, model_id: str) -> Alias:
        """Create the alias or repoint it to ``model_id`` (a ready model), atomically."""
        return cast(Alias, self._c._json("PUT", f"/v1/aliases/{name}", json={"model_id": model_id}))

    def delete(self, name: str) -> None:
        self._c._request("DELETE", f"/v1/aliases/{name}")

    def predict(
        self, name: str, images: Sequence[Any] | Any, top_k: int = 3, tta: Sequence[str] = ()
    ) -> list[Prediction]:
        """Predictions of the model the alias points to at the time of each request (see ``Models.predict``)."""
        return self._c._predict(f"/v1/aliases/{name}/predict", images, top_k, tta)


class Backbones(_Resource):
    def list(self) -> list[Backbone]:
        return cast(list[Backbone], self._c._list("/v1/backbones"))

    def get(self, name: str) -> Backbone:
        return cast(Backbone, self._c._json("GET", f"/v1/backbones/{name}"))

    def embed(self, images: Sequence[Any], backbone: str = "efficientnet_lite0") -> dict[str, Any]:
        """Feature vectors of a few images, synchronously."""
        uploads = [as_upload(img, i) for i, img in enumerate(images)]
        files = [("files", (name, data, "application/octet-stream")) for name, data in uploads]
        return self._c._json("POST", "/v1/embed", files=files, data={"backbone": backbone})

    def classify(self, name: str, images: Sequence[Any], top_k: int = 5) -> dict[str, Any]:
        """ImageNet top-k of a pretrained backbone used as it is."""
        uploads = [as_upload(img, i) for i, img in enumerate(images)]
        files = [("files", (n, data, "application/octet-stream")) for n, data in uploads]
        return self._c._json("POST", f"/v1/backbones/{name}/classify", files=files, data={"top_k": str(top_k)})


def _predict_form(top_k: int, tta: Sequence[str]) -> dict[str, Any]:
    """Predict's form fields; ``tta`` repeats its field once per augmentation (none: the field is left out)."""
    form: dict[str, Any] = {"top_k": str(top_k)}
    if isinstance(tta, str):
        tta = [tta]
    if tta:
        form["tta"] = list(tta)
    return form


class Client:
    """A tlserve API client. ``Client(url, api_key)``; use it as a context manager or call ``close()``.

    Every failure is a ``TLServeError``: ``APIError`` (the service's error code, message and status),
    ``ServiceUnreachable``, ``JobFailed``, ``JobTimeout`` or ``BadPath`` (a local file or folder)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 300.0,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = (url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise TLServeError("bad_url", f"service URL {url!r} must start with http:// or https://")
        self.url = url
        self.retries = retries
        headers = {"User-Agent": "tlserve-client/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0), transport=transport
        )
        self.datasets = Datasets(self)
        self.features = Features(self)
        self.models = Models(self)
        self.aliases = Aliases(self)
        self.jobs = Jobs(self)
        self.backbones = Backbones(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # shortcuts for the common path
    def predict(
        self, model_id: str, images: Sequence[Any] | Any, top_k: int = 3, tta: Sequence[str] = ()
    ) -> list[Prediction]:
        return self.models.predict(model_id, images, top_k, tta)

    def wait(self, job_id: str, timeout: float | None = None, on_event: EventCallback | None = None) -> Job:
        return self.jobs.wait(job_id, timeout=timeout, on_event=on_event)

    def check(self) -> None:
        """One cheap authenticated request: ``APIError`` 401 for a wrong key, ``ServiceUnreachable`` if down.
        A valid key of a narrower scope (``predict``) passes: the service knows it, it only may not list jobs."""
        try:
            self._request("GET", "/v1/jobs", params={"limit": 1})
        except APIError as e:
            if e.code != "forbidden_scope":
                raise

    def health(self) -> dict[str, Any]:
        """``/healthz``: ``{"status": "ok"|"degraded", "checks": {...}}`` (also while degraded, a 503)."""
        resp = self._send("GET", "/healthz")
        try:
            return resp.json()
        except ValueError:
            raise APIError(
                "bad_response", f"/healthz answered non-JSON: {resp.text[:200]!r}", resp.status_code
            ) from None

    # --- transport -------------------------------------------------------------------------------------------

    def _predict(self, path: str, images: Sequence[Any] | Any, top_k: int, tta: Sequence[str] = ()) -> list[Prediction]:
        if not isinstance(images, list | tuple):
            images = [images]
        uploads = [as_upload(img, i) for i, img in enumerate(images)]
        out: list[Prediction] = []
        for start in range(0, len(uploads), MAX_SYNC_FILES):
            chunk = uploads[start : start + MAX_SYNC_FILES]
            files = [("files", (name, data, "application/octet-stream")) for name, data in chunk]
            body = self._json("POST", path, files=files, data=_predict_form(top_k, tta))
            out.extend(cast(list[Prediction], body["predictions"]))
        return out

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.UnsupportedProtocol as e:
            raise TLServeError("bad_url", f"service URL {self.url!r} is not http(s): {e}") from None
        except httpx.TimeoutException as e:
            raise ServiceUnreachable("timeout", f"tlserve at {self.url} did not answer in time ({e!r})") from None
        except httpx.TransportError as e:
            raise ServiceUnreachable(
                "unreachable", f"cannot reach tlserve at {self.url} ({e}): is it running, and is the URL right?"
            ) from None

    def _request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            resp = self._send(method, path, **kwargs)
            if resp.status_code < 400:
                return resp
            error = _error_from(resp)
            retryable = retry and resp.status_code in RETRY_STATUSES and error.retry_after is not None
            if retryable and attempt < self.retries:
                attempt += 1
                time.sleep(min(error.retry_after or 0.0, 30.0))
                continue
            raise error

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError:
            raise APIError(
                "bad_response", f"{method} {path} answered non-JSON: {resp.text[:200]!r}", resp.status_code
            ) from None

    def _list(self, path: str, page_size: int = 100) -> list[Any]:
        """Every item of a paginated list, following ``Link: <...>; rel="next"``."""
        items: list[Any] = []
        url: str | None = path
        params: dict[str, Any] | None = {"limit": page_size}
        while url:
            resp = self._request("GET", url, params=params)
            items.extend(resp.json())
            url, params = resp.links.get("next", {}).get("url"), None
        return items

    def _download(self, path: str, params: dict[str, str], dest: str | os.PathLike[str], name: str) -> Path:
        target = Path(dest)
        if target.is_dir():
            target = target / name
        with self._stream("GET", path, params=params) as resp, target.open("wb") as out:
            for chunk in resp.iter_bytes():
                out.write(chunk)
        return target

    def _stream(self, method: str, path: str, **kwargs: Any) -> Any:
        return _Stream(self, method, path, kwargs)


class _Stream:
    """``with client._stream(...) as resp``: a streamed response, errors mapped like every other request."""

    def __init__(self, client: Client, method: str, path: str, kwargs: dict[str, Any]) -> None:
        self._client, self._method, self._path, self._kwargs = client, method, path, kwargs
        self._cm: Any = None

    def __enter__(self) -> httpx.Response:
        http = self._client._http
        timeout = httpx.Timeout(self._client._http.timeout.connect or 10.0, read=60.0)
        try:
            self._cm = http.stream(self._method, self._path, timeout=timeout, **self._kwargs)
            resp = self._cm.__enter__()
        except httpx.TimeoutException as e:
            raise ServiceUnreachable(
                "timeout", f"tlserve at {self._client.url} did not answer in time ({e!r})"
            ) from None
        except httpx.TransportError as e:
            raise ServiceUnreachable("unreachable", f"cannot reach tlserve at {self._client.url} ({e})") from None
        if resp.status_code >= 400:
            resp.read()
            self._cm.__exit__(None, None, None)
            raise _error_from(resp)
        return resp

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


def _error_from(resp: httpx.Response) -> APIError:
    code, message, details = f"http_{resp.status_code}", "", None
    try:
        body = resp.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code") or code)
            message = str(error.get("message") or "")
            details = error.get("details")
        elif isinstance(body, dict) and "detail" in body:
            message = str(body["detail"])
    except ValueError:
        message = resp.text.strip()[:300]
    retry_after = None
    if "retry-after" in resp.headers:
        try:
            retry_after = float(resp.headers["retry-after"])
        except ValueError:
            retry_after = None
    method, path = resp.request.method, resp.request.url.path
    message = message or f"{method} {path} failed"
    return APIError(code, message, resp.status_code, details, retry_after)


__all__ += ["BadPath"]
