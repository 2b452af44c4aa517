"""The Python client against a scripted transport (httpx.MockTransport): what it sends, how it reads the
answers, errors, pagination, event streams and job waits. The real service is in test_end_to_end.py."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from tlserve_client import APIError, BadPath, Client, JobFailed, JobTimeout, ServiceUnreachable

from tests.ingest.factories import digit, encode

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, **kwargs: Any) -> Client:
    return Client("http://tlserve.test", "tls_abc_secret", transport=httpx.MockTransport(handler), **kwargs)


def multipart(request: httpx.Request) -> dict[str, list[tuple[str | None, bytes]]]:
    """field name -> [(filename, payload)] of a multipart request body."""
    body = request.read()
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, list[tuple[str | None, bytes]]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields.setdefault(name, []).append((part.get_filename(), part.get_payload(decode=True)))
    return fields


def sse(*jobs: dict[str, Any], comment: bool = False) -> bytes:
    text = ": keep-alive\n\n" if comment else ""
    text += "".join(f"event: job\ndata: {json.dumps(j)}\n\n" for j in jobs)
    return text.encode()


def job(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": "job_1", "kind": "ingest", "status": status, "progress": {}, "metrics": {}, "error": None, **extra}


def write_class_folders(root: Path, classes: tuple[int, ...] = (0, 1), per_class: int = 2) -> Path:
    from tests.ingest.factories import digit_indices

    for label in classes:
        (root / str(label)).mkdir(parents=True)
        for index in digit_indices(label, per_class):
            (root / str(label) / f"d{index}.png").write_bytes(encode(digit(index)))
    (root / ".DS_Store").write_bytes(b"junk")
    return root


def test_an_error_body_becomes_an_exception_with_the_api_code_message_and_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer tls_abc_secret"
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no model 'm_x'"}})

    with make_client(handler) as client, pytest.raises(APIError) as caught:
        client.models.get("m_x")
    assert (caught.value.code, caught.value.message, caught.value.status) == ("not_found", "no model 'm_x'", 404)
    assert "no model 'm_x'" in str(caught.value) and "404" in str(caught.value)


def test_an_unreachable_service_is_a_service_unreachable_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with make_client(handler) as client, pytest.raises(ServiceUnreachable) as caught:
        client.datasets.list()
    assert caught.value.code == "unreachable" and "http://tlserve.test" in caught.value.message


def test_a_url_without_scheme_is_refused_at_once() -> None:
    with pytest.raises(Exception) as caught:
        Client("127.0.0.1:8000", "k")
    assert getattr(caught.value, "code", None) == "bad_url"


def test_refused_for_overload_is_sent_again_after_retry_after() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            body = {"error": {"code": "overloaded", "message": "queue full"}}
            return httpx.Response(503, json=body, headers={"Retry-After": "0"})
        return httpx.Response(200, json={"model_id": "m", "predictions": [{"file": "a.png", "label": "1"}]})

    with make_client(handler) as client:
        rows = client.predict("m", [("a.png", b"png")])
    assert rows == [{"file": "a.png", "label": "1"}] and len(calls) == 2


def test_lists_follow_the_link_header_to_the_last_page() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("cursor") == "2":
            return httpx.Response(200, json=[{"id": "ds_3"}])
        assert request.url.params["limit"] == "100"
        link = '<http://tlserve.test/v1/datasets?limit=100&cursor=2>; rel="next"'
        return httpx.Response(200, json=[{"id": "ds_1"}, {"id": "ds_2"}], headers={"Link": link})

    with make_client(handler) as client:
        assert [d["id"] for d in client.datasets.list()] == ["ds_1", "ds_2", "ds_3"]


def test_a_class_folder_is_uploaded_as_a_zip_of_its_files(tmp_path: Path) -> None:
    folder = write_class_folders(tmp_path / "digits")
    seen: dict[str, Any] = {}
    progress: list[tuple[int, int]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/v1/datasets")
        fields = multipart(request)
        seen["name"] = fields["name"][0][1].decode()
        seen["test_fraction"] = fields["test_fraction"][0][1].decode()
        filename, payload = fields["archive"][0]
        seen["filename"] = filename
        with zipfile.ZipFile(io.BytesIO(payload)) as zf:
            seen["members"] = sorted(zf.namelist())
            seen["png"] = zf.read(seen["members"][0])[:4]
        return httpx.Response(202, json={"id": "ds_1", "job_id": "job_1", "status": "processing", "version": 1})

    with make_client(handler) as client:
        out = client.datasets.upload(folder, test_fraction=0.25, on_upload=lambda s, t: progress.append((s, t)))
    assert out["id"] == "ds_1" and out["job_id"] == "job_1"
    assert seen["name"] == "digits" and seen["test_fraction"] == "0.25" and seen["filename"] == "digits.zip"
    assert seen["members"] == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert seen["png"] == b"\x89PNG"
    assert progress and progress[-1][0] == progress[-1][1] > 0  # the bar reached the whole file


def test_a_labels_csv_is_uploaded_with_the_files_it_lists(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(encode(digit(0)))
    (tmp_path / "imgs" / "b.png").write_bytes(encode(digit(1)))
    (tmp_path / "unrelated.txt").write_text("not listed")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\nimgs/a.png,zero\nimgs/b.png,one\nimgs/missing.png,two\n")
    members: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        with zipfile.ZipFile(io.BytesIO(multipart(request)["archive"][0][1])) as zf:
            members.extend(zf.namelist())
            assert zf.read("labels.csv").decode().startswith("path,label")
        return httpx.Response(202, json={"id": "ds_1", "job_id": "job_1", "status": "processing"})

    with make_client(handler) as client:
        client.datasets.upload(csv_path, name="csv")
    assert sorted(members) == ["imgs/a.png", "imgs/b.png", "labels.csv"]


def test_a_missing_dataset_path_is_a_bad_path_error_before_any_request(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    with make_client(handler) as client, pytest.raises(BadPath) as caught:
        client.datasets.upload(tmp_path / "nope", name="x")
    assert caught.value.code == "bad_path" and "does not exist" in caught.value.message


def test_wait_follows_the_event_stream_to_the_final_state() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/jobs/job_1/events"
        body = sse(job("queued"), job("running", progress={"stage": "decode", "done": 1, "total": 2}), comment=True)
        body += sse(job("succeeded", progress={"stage": "done", "done": 2, "total": 2}))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    seen: list[str] = []
    with make_client(handler) as client:
        final = client.jobs.wait("job_1", on_event=lambda j: seen.append(j["status"]))
    assert final["status"] == "succeeded" and seen == ["queued", "running", "succeeded"]


def test_a_broken_stream_is_reopened_after_reading_the_state() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/events"):
            if calls.count(request.url.path) == 1:  # the first stream ends before the job does
                return httpx.Response(200, content=sse(job("running")))
            return httpx.Response(200, content=sse(job("running"), job("succeeded")))
        return httpx.Response(200, json=job("running", attempts=1))

    with make_client(handler) as client:
        states = [j["status"] for j in client.jobs.events("job_1")]
    assert states[-1] == "succeeded"
    assert calls == ["/v1/jobs/job_1/events", "/v1/jobs/job_1", "/v1/jobs/job_1/events"]


def test_a_failed_job_raises_job_failed_with_its_error_code() -> None:
    failed = job("failed", error={"code": "no_images", "message": "the archive holds no readable image"})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(failed))

    with make_client(handler) as client:
        with pytest.raises(JobFailed) as caught:
            client.jobs.wait("job_1")
        assert client.jobs.wait("job_1", raise_on_failure=False)["status"] == "failed"
    assert caught.value.code == "no_images" and "no readable image" in caught.value.message
    assert caught.value.job["status"] == "failed"


def test_wait_gives_up_after_its_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=sse(job("running")))
        return httpx.Response(200, json=job("running"))

    with make_client(handler) as client, pytest.raises(JobTimeout) as caught:
        client.jobs.wait("job_1", timeout=0.2)
    assert caught.value.code == "wait_timeout" and caught.value.job["status"] == "running"


def test_predict_sends_paths_bytes_and_pil_images_in_order(tmp_path: Path) -> None:
    path = tmp_path / "seven.png"
    path.write_bytes(encode(digit(7)))
    sent: list[tuple[str | None, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fields = multipart(request)
        sent.extend(fields["files"])
        assert fields["top_k"][0][1] == b"2"
        preds = [{"file": name, "label": "7", "score": 0.9, "top_k": []} for name, _ in fields["files"]]
        return httpx.Response(200, json={"model_id": "m", "predictions": preds})

    image = digit(3)
    with make_client(handler) as client:
        rows = client.models.predict("m", [str(path), encode(digit(5)), image, ("named.png", b"raw")], top_k=2)
    assert [r["file"] for r in rows] == [path.as_posix(), "image1", "image2.png", "named.png"]
    assert sent[0][1] == path.read_bytes() and sent[3][1] == b"raw"
    decoded = Image.open(io.BytesIO(sent[2][1]))
    assert decoded.size == image.size and decoded.tobytes() == image.tobytes()  # lossless


def test_predict_sends_tta_as_a_repeated_field_and_leaves_it_out_by_default() -> None:
    sent: list[list[bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fields = multipart(request)
        sent.append([value for _, value in fields.get("tta", [])])
        preds = [{"file": name, "label": "x"} for name, _ in fields["files"]]
        return httpx.Response(200, json={"model_id": "m", "predictions": preds, "tta": ["hflip"]})

    with make_client(handler) as client:
        client.predict("m", [("a.png", b"x")])
        client.models.predict("m", [("a.png", b"x")], tta=["hflip", "vflip"])
        client.aliases.predict("prod", [("a.png", b"x")], tta="hflip")
    assert sent == [[], [b"hflip", b"vflip"], [b"hflip"]]


def test_predict_splits_a_large_set_into_requests_within_the_service_limit() -> None:
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        files = multipart(request)["files"]
        sizes.append(len(files))
        return httpx.Response(200, json={"predictions": [{"file": n, "label": "x"} for n, _ in files]})

    with make_client(handler) as client:
        rows = client.predict("m", [(f"f{i}.png", b"x") for i in range(130)])
    assert sizes == [64, 64, 2] and [r["file"] for r in rows] == [f"f{i}.png" for i in range(130)]


def test_predict_batch_zips_the_images_runs_the_job_and_fetches_its_results(tmp_path: Path) -> None:
    folder = write_class_folders(tmp_path / "imgs", classes=(4,), per_class=3)
    members: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/models/m/predictions":
            with zipfile.ZipFile(io.BytesIO(multipart(request)["archive"][0][1])) as zf:
                members.extend(zf.namelist())
            return httpx.Response(202, json={"job_id": "job_9", "status": "queued"})
        if path == "/v1/jobs/job_9/events":
            return httpx.Response(200, content=sse(job("succeeded", id="job_9", kind="predict_batch")))
        if path == "/v1/models/m/predictions/job_9":
            assert request.url.params["format"] == "json"
            return httpx.Response(200, json={"predictions": [{"file": m, "label": "4"} for m in members]})
        raise AssertionError(path)

    with make_client(handler) as client:
        rows = client.models.predict_batch("m", [folder])
    assert len(members) == 3 and all(m.endswith(".png") and not m.startswith("/") for m in members)
    assert [r["label"] for r in rows] == ["4", "4", "4"]
    assert [r["file"] for r in rows] == sorted(p.as_posix() for p in folder.rglob("*.png"))  # the names given


def test_features_from_the_cache_need_no_wait() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.read()) == {"dataset_id": "ds_1", "backbone": "resnet18"}
        return httpx.Response(200, json={"id": "fs_1", "status": "ready", "cached": True, "job_id": None})

    with make_client(handler) as client:
        fs = client.features.extract("ds_1", "resnet18", wait=True)
    assert fs["id"] == "fs_1" and fs["cached"] is True


def test_train_with_finetune_settings_asks_for_a_finetune_and_returns_the_model() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            bodies.append(json.loads(request.read()))
            return httpx.Response(202, json={"id": "m_1", "job_id": "job_1", "status": "queued"})
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=sse(job("succeeded", kind="finetune")))
        return httpx.Response(200, json={"id": "m_1", "status": "ready", "metrics": {"accuracy": 0.9}})

    with make_client(handler) as client:
        model = client.models.train("ds_1", finetune={"epochs": 2}, wait=True)
    assert bodies == [
        {"dataset_id": "ds_1", "backbone": "efficientnet_lite0", "strategy": "finetune", "finetune": {"epochs": 2}}
    ]
    assert model["metrics"]["accuracy"] == 0.9
