"""The command line: ``tlserve-client datasets|features|models|predict|compare|jobs|backbones|login``.

The same commands are mounted under the server's ``tlserve``. Output contract: a command that creates
something prints the new id alone on the last line of stdout (``--format json``: the resource's JSON);
progress and tables go to stderr; an error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from tlserve_client.archive import image_files, is_zip
from tlserve_client.client import MAX_SYNC_FILES, Client
from tlserve_client.config import config_path, load_config, save_config
from tlserve_client.errors import JobFailed, TLServeError

DEFAULT_BACKBONE = "efficientnet_lite0"
FORMATS = click.Choice(["text", "json"])


class _LearningRate(click.ParamType):
    """A positive number or "auto"."""

    name = "LR|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | str:
        if isinstance(value, float) or str(value).strip().lower() == "auto":
            return value if isinstance(value, float) else "auto"
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)


_LR = _LearningRate()


# --- errors as one line --------------------------------------------------------------------------------------


def fail(message: str, code: int = 1) -> NoReturn:
    one_line = " ".join(str(message).split())
    click.echo(f"error: {one_line}", err=True)
    sys.exit(code)


class OneLineGroup(click.Group):
    """A group whose every failure ends as one ``error: ...`` line on stderr and a non-zero exit status."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None, **extra: Any):
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help(), err=True)
            sys.exit(2)
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            fail(f"{e.format_message()}{where}", e.exit_code)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            fail(
                "interrupted (a job already started goes on: 'jobs watch ID' follows it, 'jobs cancel ID' stops it)",
                130,
            )
        except TLServeError as e:
            fail(str(e))
        except OSError as e:
            fail(f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else str(e))
        except Exception as e:  # the promise is one line, never a traceback
            fail(f"unexpected {type(e).__name__}: {e}")
        sys.exit(rv if isinstance(rv, int) else 0)


# --- where the service is ------------------------------------------------------------------------------------


class Connection:
    def __init__(self) -> None:
        self.url: str | None = None
        self.api_key: str | None = None
        self._client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            stored = load_config() if not (self.url and self.api_key) else {}
            url = self.url or stored.get("url")
            key = self.api_key or stored.get("api_key")
            if not url:
                raise click.UsageError("no service URL: set TLSERVE_URL, pass --url, or run 'login' once")
            if not key:
                raise click.UsageError("no API key: set TLSERVE_API_KEY, pass --api-key, or run 'login' once")
            self._client = Client(url, key)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def connection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--url`` and ``--api-key`` on a root group (they default to TLSERVE_URL and TLSERVE_API_KEY)."""
    f = click.option("--api-key", envvar="TLSERVE_API_KEY", default=None, help="API key [env TLSERVE_API_KEY]")(f)
    f = click.option("--url", envvar="TLSERVE_URL", default=None, help="service URL [env TLSERVE_URL]")(f)
    return f


def init_connection(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    conn = ctx.ensure_object(Connection)
    conn.url, conn.api_key = url or conn.url, api_key or conn.api_key
    ctx.call_on_close(conn.close)


def _client() -> Client:
    return click.get_current_context().ensure_object(Connection).client()


# --- output --------------------------------------------------------------------------------------------------


def _console(err: bool) -> Console:
    stream = sys.stderr if err else sys.stdout
    tty = stream.isatty()
    return Console(file=stream, width=None if tty else 160, highlight=False, soft_wrap=not tty)


def _emit(resource: dict[str, Any], fmt: str, key: str = "id") -> None:
    """The last stdout line: the resource's id, or its JSON with ``--format json``."""
    if fmt == "json":
        click.echo(json.dumps(resource, indent=2, sort_keys=True))
    else:
        click.echo(resource[key])


def _pct(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


@contextmanager
def job_progress(label: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A live bar on stderr fed by job events; fine-tuning epochs are printed as rows as they finish."""
    console = _console(err=True)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    shown = {"epochs": 0}
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=None)

        def on_event(job: dict[str, Any]) -> None:
            p = job.get("progress") or {}
            stage = p.get("stage") or job.get("status", "")
            total = p.get("total") or None
            done = p.get("done") or 0
            progress.update(task, description=f"{label} [{job.get('status')}] {stage}", completed=done, total=total)
            history = (job.get("metrics") or {}).get("history") or []
            if history and shown["epochs"] == 0:
                progress.console.print("epoch  train loss  train acc  val loss  val acc  seconds")
            for row in history[shown["epochs"] :]:
                progress.console.print(
                    f"{row.get('epoch', '?'):>5}  {_pct(row.get('train_loss')):>10}  {_pct(row.get('train_acc')):>9}  "
                    f"{_pct(row.get('val_loss')):>8}  {_pct(row.get('val_acc')):>7}  {_pct(row.get('seconds')):>7}"
                )
            shown["epochs"] = max(shown["epochs"], len(history))

        yield on_event


def _follow(job_id: str, label: str) -> dict[str, Any]:
    """Wait for a job with a progress bar; a failed or cancelled job is an error (one line, exit 1)."""
    with job_progress(label) as on_event:
        job = _client().jobs.wait(job_id, on_event=on_event, raise_on_failure=False)
    if job["status"] != "succeeded":
        raise JobFailed(dict(job))
    return dict(job)


class _FilesOrBytes(ProgressColumn):
    """``3/10 files`` for the zipping task, bytes sent and the rate for the upload."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes, self._speed = DownloadColumn(), TransferSpeedColumn()

    def render(self, task: Any) -> Text:
        if task.fields.get("unit") == "files":
            return Text(f"{int(task.completed)}/{int(task.total or 0)} files")
        return Text.assemble(self._bytes.render(task), " ", self._speed.render(task))


# --- the commands --------------------------------------------------------------------------------------------


@click.group("datasets")
def datasets() -> None:
    """Upload, list, show and delete labelled image sets."""


@datasets.command("upload")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="dataset name (default: the folder or file name)")
@click.option("--val-fraction", type=float, default=None, help="share of images held out for validation [0.1]")
@click.option("--test-fraction", type=float, default=None, help="share of images held out for testing [0.2]")
@click.option("--seed", type=int, default=None, help="seed of the stratified split [0]")
@click.option("--wait", is_flag=True, help="follow the ingestion job and print class counts and rejected files")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def datasets_upload(
    path: Path,
    name: str | None,
    val_fraction: float | None,
    test_fraction: float | None,
    seed: int | None,
    wait: bool,
    fmt: str,
) -> None:
    """Upload PATH: a folder with one sub-folder per class, a folder with a labels.csv, a labels.csv, or a zip.

    A folder is zipped file by file into a temporary file (not in memory). Prints the dataset id."""
    console = _console(err=True)
    if not path.exists():
        fail(f"{path} does not exist: give a folder with one sub-folder per class, a zip or a labels.csv")
    if path.is_file() and not is_zip(path) and path.suffix.lower() != ".csv":
        fail(f"{path} is neither a zip nor a labels.csv: give a folder of class folders, a zip or a labels.csv")
    client = _client()
    columns = (TextColumn("{task.description:<6}"), BarColumn(), _FilesOrBytes())
    with Progress(*columns, console=console, transient=False) as progress:
        zipping = progress.add_task("zip", total=None, visible=False, unit="files")
        sending = progress.add_task("upload", total=None)

        def on_zip(done: int, total: int) -> None:
            progress.update(zipping, completed=done, total=total, visible=True)

        def on_upload(sent: int, total: int) -> None:
            progress.update(sending, completed=sent, total=total)

        accepted = client.datasets.upload(
            path,
            name,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            on_zip=on_zip,
            on_upload=on_upload,
        )
    console.print(f"dataset {accepted['id']} created; ingestion job {accepted['job_id']}")
    result: dict[str, Any] = dict(accepted)
    if wait:
        _follow(accepted["job_id"], "ingest")
        result = dict(client.datasets.get(accepted["id"]))
        _print_dataset(result, console)
    _emit(result, fmt)


def _print_dataset(ds: dict[str, Any], console: Console) -> None:
    console.print(
        f"dataset {ds['id']} '{ds.get('name')}' v{ds.get('version')}: {ds.get('status')}, "
        f"{ds.get('num_images', 0)} images, splits {ds.get('splits') or {}}"
    )
    classes = ds.get("classes") or {}
    if classes:
        table = Table(title="classes")
        table.add_column("class")
        table.add_column("images", justify="right")
        for label, count in sorted(classes.items()):
            table.add_row(str(label), str(count))
        console.print(table)
    rejected = ds.get("rejected") or []
    if rejected:
        table = Table(title=f"{len(rejected)} rejected files")
        table.add_column("file")
        table.add_column("reason")
        for row in rejected:
            table.add_row(str(row.get("file")), str(row.get("reason")))
        console.print(table)
    duplicates = ds.get("duplicates") or []
    if duplicates:
        console.print(f"{len(duplicates)} duplicate files were skipped")
    if ds.get("error"):
        console.print(f"error: {ds['error']}")


@datasets.command("list")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def datasets_list(fmt: str) -> None:
    """List datasets."""
    rows = _client().datasets.list()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("id", "name", "version", "status", "images", "classes"):
        table.add_column(col)
    for d in rows:
        table.add_row(
            d["id"],
            str(d.get("name")),
            str(d.get("version")),
            str(d.get("status")),
            str(d.get("num_images")),
            str(len(d.get("classes") or {})),
        )
    _console(err=False).print(table)


@datasets.command("show")
@click.argument("dataset_id")
@click.option("--version", type=int, default=None, help="a given version (default: the latest)")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def datasets_show(dataset_id: str, version: int | None, fmt: str) -> None:
    """Show a dataset: class counts, splits, rejected files with reasons."""
    ds = _client().datasets.get(dataset_id, version)
    if fmt == "json":
        click.echo(json.dumps(ds, indent=2))
    else:
        _print_dataset(dict(ds), _console(err=False))


@datasets.command("delete")
@click.argument("dataset_id")
def datasets_delete(dataset_id: str) -> None:
    """Delete a dataset and its stored images."""
    _client().datasets.delete(dataset_id)
    click.echo(f"deleted dataset {dataset_id}", err=True)


@click.group("features")
def features() -> None:
    """Extract (or find in the cache) backbone features of a dataset."""


@features.command("extract")
@click.option("--dataset", "dataset_id", required=True, help="dataset id")
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True)
@click.option("--version", type=int, default=None, help="dataset version (default: the latest ready one)")
@click.option("--allow-random-weights", is_flag=True, help="allow a backbone without pretrained weights")
@click.option("--wait", is_flag=True, help="follow the extraction job")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def features_extract(
    dataset_id: str, backbone: str, version: int | None, allow_random_weights: bool, wait: bool, fmt: str
) -> None:
    """Extract features; prints the feature-set id (also when it came from the cache)."""
    client = _client()
    console = _console(err=True)
    fs = dict(client.features.extract(dataset_id, backbone, version=version, allow_random_weights=allow_random_weights))
    if fs.get("cached"):
        console.print(f"feature set {fs['id']} served from the cache ({fs.get('num_images')} images)")
    else:
        console.print(f"feature set {fs['id']}: extraction job {fs.get('job_id')}")
        if wait and fs.get("job_id"):
            job = _follow(fs["job_id"], "extract")
            fs = {**client.features.get(fs["id"]), "cached": False}
            m = job.get("metrics") or {}
            if m.get("images_per_s"):
                console.print(f"{m.get('forward_images')} images in {m.get('seconds')}s ({m['images_per_s']} images/s)")
    _emit(fs, fmt)


@features.command("search")
@click.argument("feature_set_id")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--image-id", default=None, help="search with an image of the set instead of files")
@click.option("-k", "k", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def features_search(feature_set_id: str, paths: tuple[Path, ...], image_id: str | None, k: int, fmt: str) -> None:
    """The K nearest images of the feature set to each FILE (or to --image-id): file, label, split, distance."""
    client = _client()
    if image_id:
        results = client.features.search(feature_set_id, image_id=image_id, k=k)
    else:
        if not paths:
            raise click.UsageError("give image files, or --image-id of an image of the set")
        results = client.features.search(feature_set_id, [str(f) for f, _ in image_files(paths)], k=k)
    if fmt == "json":
        click.echo(json.dumps({"results": results}, indent=2))
        return
    table = Table()
    for col in ("query", "rank", "file", "label", "split", "distance"):
        table.add_column(col)
    for r in results:
        query = r.get("file") or r.get("image_id") or ""
        if "error" in r:
            table.add_row(query, "", "[red]error[/red]", str(r["error"]), "", "")
        for rank, n in enumerate(r.get("neighbours") or [], 1):
            table.add_row(
                query if rank == 1 else "", str(rank), n["file"], n["label"], n["split"], f"{n['distance']:.4f}"
            )
    _console(err=False).print(table)


@features.command("leaks")
@click.argument("feature_set_id")
@click.option("--threshold", type=float, default=None, help="cosine distance (default: the service's)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def features_leaks(feature_set_id: str, threshold: float | None, fmt: str) -> None:
    """Test images that nearly duplicate a training image (train/test leakage); exit 0 either way."""
    pairs = _client().features.near_duplicates(feature_set_id, threshold)
    if fmt == "json":
        click.echo(json.dumps({"pairs": pairs}, indent=2))
        return
    _console(err=True).print(f"{len(pairs)} test image(s) nearly duplicate a training image")
    table = Table()
    for col in ("test image", "training image", "labels", "distance"):
        table.add_column(col)
    for p in pairs:
        labels = p["test"]["label"] + ("" if p["test"]["label"] == p["train"]["label"] else f" / {p['train']['label']}")
        table.add_row(p["test"]["file"], p["train"]["file"], labels, f"{p['distance']:.4f}")
    _console(err=False).print(table)


@click.group("models")
def models() -> None:
    """Train, list and inspect models."""


@models.command("train")
@click.option("--dataset", "dataset_id", required=True, help="dataset id")
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True)
@click.option("--head", "head_type", type=click.Choice(["logistic", "linear_svm", "ridge", "sgd"]), default=None)
@click.option("--C", "c_value", type=float, default=None, help="head regularisation (default: cross-validated)")
@click.option("--class-weight", type=click.Choice(["balanced"]), default=None)
@click.option("--finetune", "finetune_json", default=None, help="fine-tuning settings as JSON, e.g. '{\"epochs\": 3}'")
@click.option("--epochs", type=int, default=None, help="fine-tune for N epochs")
@click.option("--unfreeze", default=None, help="fine-tune: head | last:N | all | gradual")
@click.option("--optimizer", default=None, help="fine-tune: sgd, nesterov, adagrad, adadelta, rmsprop, adam, adamw")
@click.option("--lr", type=_LR, default=None, help='fine-tune: learning rate, or "auto" (a range test picks it)')
@click.option("--batch-size", type=int, default=None, help="fine-tune: batch size")
@click.option("--augment", multiple=True, help="fine-tune: hflip, vflip, rotate, crop, ... (repeatable)")
@click.option("--version", type=int, default=None, help="dataset version (default: the latest ready one)")
@click.option("--allow-random-weights", is_flag=True, help="allow a backbone without pretrained weights")
@click.option("--seed", type=int, default=None)
@click.option("--wait", is_flag=True, help="follow training (per-epoch rows for fine-tuning) and print metrics")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def models_train(
    dataset_id: str,
    backbone: str,
    head_type: str | None,
    c_value: float | None,
    class_weight: str | None,
    finetune_json: str | None,
    epochs: int | None,
    unfreeze: str | None,
    optimizer: str | None,
    lr: float | str | None,
    batch_size: int | None,
    augment: tuple[str, ...],
    version: int | None,
    allow_random_weights: bool,
    seed: int | None,
    wait: bool,
    fmt: str,
) -> None:
    """Train a linear probe, or fine-tune with --finetune/--epochs/--unfreeze. Prints the model id."""
    head: dict[str, Any] = {}
    for key, value in (("type", head_type), ("C", c_value), ("class_weight", class_weight)):
        if value is not None:
            head[key] = value
    finetune: dict[str, Any] | None = None
    if finetune_json:
        try:
            finetune = json.loads(finetune_json)
        except ValueError as e:
            raise click.BadParameter(f"not valid JSON ({e})", param_hint="--finetune") from None
        if not isinstance(finetune, dict):
            raise click.BadParameter("give a JSON object, e.g. '{\"epochs\": 3}'", param_hint="--finetune")
    flags = {"epochs": epochs, "unfreeze": unfreeze, "optimizer": optimizer, "lr": lr, "batch_size": batch_size}
    flags["augment"] = list(augment) or None
    if any(v is not None for v in flags.values()):
        finetune = {**(finetune or {}), **{k: v for k, v in flags.items() if v is not None}}
    client = _client()
    console = _console(err=True)
    created = dict(
        client.models.train(
            dataset_id,
            backbone,
            head=head or None,
            finetune=finetune,
            version=version,
            allow_random_weights=allow_random_weights,
            seed=seed,
        )
    )
    console.print(f"model {created['id']}: training job {created['job_id']}")
    result = created
    if wait:
        _follow(created["job_id"], "finetune" if finetune is not None else "fit")
        result = dict(client.models.get(created["id"]))
        m = result.get("metrics") or {}
        console.print(
            f"model {result['id']}: test accuracy {_pct(m.get('accuracy'))}, macro-F1 {_pct(m.get('macro_f1'))}"
        )
    _emit(result, fmt)


@models.command("list")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def models_list(fmt: str) -> None:
    """List models."""
    rows = _client().models.list()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("id", "status", "strategy", "backbone", "dataset", "accuracy", "macro-F1"):
        table.add_column(col)
    for m in rows:
        metrics = m.get("metrics") or {}
        table.add_row(
            m["id"],
            str(m.get("status")),
            str(m.get("strategy")),
            str(m.get("backbone")),
            str(m.get("dataset_id")),
            _pct(metrics.get("accuracy")),
            _pct(metrics.get("macro_f1")),
        )
    _console(err=False).print(table)


@models.command("show")
@click.argument("model_id")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def models_show(model_id: str, fmt: str) -> None:
    """Accuracy, macro-F1, the per-class table and the confusion matrix of a model."""
    model = dict(_client().models.get(model_id))
    if fmt == "json":
        click.echo(json.dumps(model, indent=2))
        return
    console = _console(err=False)
    m = model.get("metrics") or {}
    console.print(
        f"model {model['id']} ({model.get('strategy')}, {model.get('backbone')}, dataset {model.get('dataset_id')}): "
        f"{model.get('status')}"
    )
    if not m:
        console.print("no metrics yet")
        return
    console.print(
        f"accuracy {_pct(m.get('accuracy'))}   macro-F1 {_pct(m.get('macro_f1'))}   "
        f"train accuracy {_pct(m.get('train_accuracy'))}"
    )
    per_class = m.get("per_class") or {}
    if per_class:
        table = Table(title="per class (test split)")
        for col in ("class", "precision", "recall", "F1", "support"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for label, row in per_class.items():
            table.add_row(label, _pct(row["precision"]), _pct(row["recall"]), _pct(row["f1"]), str(row["support"]))
        console.print(table)
    matrix, labels = m.get("confusion_matrix"), m.get("labels") or model.get("labels") or []
    if matrix:
        table = Table(title="confusion matrix (rows: true, columns: predicted)")
        table.add_column("true \\ predicted")
        for label in labels:
            table.add_column(str(label), justify="right")
        for label, row in zip(labels, matrix, strict=False):
            table.add_row(str(label), *(str(v) for v in row))
        console.print(table)


@models.command("suggest")
@click.argument("model_id")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=20, show_default=True, help="how many images")
@click.option("--strategy", type=click.Choice(["margin", "entropy", "coreset"]), default="margin", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def models_suggest(model_id: str, k: int, strategy: str, fmt: str) -> None:
    """The unlabelled images of MODEL_ID's dataset to label next, best first (a linear probe's ranking)."""
    found = _client().models.suggest(model_id, k=k, strategy=strategy)
    if fmt == "json":
        click.echo(json.dumps({"suggestions": found}, indent=2))
        return
    table = Table()
    for col in ("image id", "file", "predicted", "score", strategy):
        table.add_column(col)
    for s in found:
        table.add_row(s["image_id"], s["file"], s["label"], f"{s['score']:.3f}", f"{s['value']:.4f}")
    _console(err=False).print(table)


@models.command("export")
@click.argument("model_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="file or folder to write the graph to",
)
def models_export(model_id: str, output: Path) -> None:
    """Save MODEL_ID as one ONNX graph (images in, class probabilities out); prints its path."""
    click.echo(str(_client().models.export(model_id, output)))


@models.command("delete")
@click.argument("model_id")
def models_delete(model_id: str) -> None:
    """Delete a model (it stops serving)."""
    _client().models.delete(model_id)
    click.echo(f"deleted model {model_id}", err=True)


@click.group("aliases")
def aliases() -> None:
    """Stable model names for applications: list, set (create or repoint), delete."""


@aliases.command("list")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def aliases_list(fmt: str) -> None:
    """List the aliases and the model each points to."""
    rows = _client().aliases.list()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    table = Table()
    for col in ("alias", "model", "updated"):
        table.add_column(col)
    for a in rows:
        table.add_row(a["name"], a["model_id"], a["updated_at"])
    _console(err=False).print(table)


@aliases.command("set")
@click.argument("name")
@click.argument("model_id")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def aliases_set(name: str, model_id: str, fmt: str) -> None:
    """Point alias NAME at MODEL_ID (creating it, or repointing it atomically)."""
    alias = _client().aliases.set(name, model_id)
    click.echo(f"alias {name} -> {model_id}", err=True)
    _emit(dict(alias), fmt, key="name")


@aliases.command("delete")
@click.argument("name")
def aliases_delete(name: str) -> None:
    """Delete alias NAME (the model stays)."""
    _client().aliases.delete(name)
    click.echo(f"deleted alias {name}", err=True)


@click.command("predict")
@click.argument("model_id", metavar="MODEL")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option(
    "--batch-over",
    type=click.IntRange(1),
    default=MAX_SYNC_FILES,
    show_default=True,
    help="more images than this go through a batch-prediction job",
)
@click.option(
    "--tta",
    multiple=True,
    metavar="hflip|vflip",
    help="test-time augmentation, repeatable: average each image's probabilities with its flipped copy's",
)
def predict(
    model_id: str, paths: tuple[Path, ...], top_k: int, fmt: str, batch_over: int, tta: tuple[str, ...]
) -> None:
    """Predict the labels of image FILEs and of the images in DIRs with MODEL, a model id or @ALIAS
    (prints predictions only)."""
    files = image_files(paths)
    client = _client()
    alias = model_id[1:] if model_id.startswith("@") else None
    if alias and len(files) > batch_over:
        model_id = client.aliases.get(alias)["model_id"]  # a batch job runs on the model the alias names now
        alias = None
    if alias:
        rows = [dict(r) for r in client.aliases.predict(alias, [str(f) for f, _ in files], top_k, tta)]
    elif len(files) > batch_over:
        console = _console(err=True)

        def started(accepted: dict[str, Any]) -> None:
            console.print(f"{len(files)} images: batch-prediction job {accepted['job_id']}")

        with job_progress("predict") as on_event:
            found = client.models.predict_batch(
                model_id, [name for _, name in files], top_k, on_event=on_event, on_start=started, tta=tta
            )
        rows = [dict(r) for r in found]
    else:
        rows = [dict(r) for r in client.models.predict(model_id, [str(f) for f, _ in files], top_k, tta)]
    _print_predictions(rows, fmt)


def _print_predictions(rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps({"predictions": rows}, indent=2))
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file", "label", "score", "top_k", "error"])
        for r in rows:
            top = ";".join(f"{t['label']}:{t['score']:.4f}" for t in r.get("top_k") or [])
            score = f"{r['score']:.6f}" if "score" in r else ""
            writer.writerow([r["file"], r.get("label", ""), score, top, r.get("error", "")])
        click.echo(buffer.getvalue(), nl=False)
        return
    table = Table()
    for col in ("file", "label", "score", "top-k"):
        table.add_column(col)
    for r in rows:
        if "error" in r:
            table.add_row(r["file"], "[red]error[/red]", "", str(r["error"]))
        else:
            top = ", ".join(f"{t['label']} {t['score']:.2f}" for t in r.get("top_k") or [])
            table.add_row(r["file"], str(r["label"]), f"{r['score']:.3f}", top)
    _console(err=False).print(table)


@click.command("compare")
@click.option("--dataset", "dataset_id", required=True, help="dataset id")
@click.argument("backbones", nargs=-1, required=True)
@click.option("--head", "head_type", type=click.Choice(["logistic", "linear_svm", "ridge", "sgd"]), default=None)
@click.option("--allow-random-weights", is_flag=True, help="allow backbones without pretrained weights")
@click.option("--wait/--no-wait", default=True, show_default=True, help="follow the job and print the leaderboard")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def compare(
    dataset_id: str, backbones: tuple[str, ...], head_type: str | None, allow_random_weights: bool, wait: bool, fmt: str
) -> None:
    """Linear probes of several BACKBONEs on one dataset, ranked. Prints the compare job's id."""
    client = _client()
    console = _console(err=True)
    head = {"type": head_type} if head_type else None
    job = dict(client.models.compare(dataset_id, backbones, head=head, allow_random_weights=allow_random_weights))
    console.print(f"compare job {job['id']}")
    if wait:
        job = _follow(job["id"], "compare")
        table = Table(title="leaderboard (test split)")
        for col in ("rank", "backbone", "test accuracy", "macro-F1", "extraction s", "cache"):
            table.add_column(col)
        for row in (job.get("metrics") or {}).get("leaderboard") or []:
            table.add_row(
                str(row.get("rank")),
                str(row.get("backbone")),
                _pct(row.get("test_accuracy")),
                _pct(row.get("macro_f1")),
                str(row.get("extraction_seconds")),
                "yes" if row.get("features_from_cache") else "",
            )
        console.print(table)
    _emit(job, fmt)


@click.group("jobs")
def jobs() -> None:
    """List, watch and cancel jobs."""


@jobs.command("list")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def jobs_list(fmt: str) -> None:
    """List jobs."""
    rows = _client().jobs.list()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("id", "kind", "status", "progress", "resource", "created"):
        table.add_column(col)
    for j in rows:
        p = j.get("progress") or {}
        progress = f"{p.get('stage', '')} {p.get('done', 0)}/{p.get('total', 0)}" if p else ""
        resource = (j.get("resource") or {}).get("id", "")
        table.add_row(j["id"], j.get("kind", ""), j.get("status", ""), progress, resource, j.get("created_at") or "")
    _console(err=False).print(table)


@jobs.command("watch")
@click.argument("job_id")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def jobs_watch(job_id: str, fmt: str) -> None:
    """Follow a job's progress until it ends; exits non-zero if it failed or was cancelled."""
    with job_progress(job_id) as on_event:
        job = dict(_client().jobs.wait(job_id, on_event=on_event, raise_on_failure=False))
    if fmt == "json":
        click.echo(json.dumps(job, indent=2))
    else:
        click.echo(job["status"])
    if job["status"] != "succeeded":
        raise JobFailed(job)


@jobs.command("cancel")
@click.argument("job_id")
def jobs_cancel(job_id: str) -> None:
    """Ask a job to stop (a queued job is cancelled at once, a running one at its next step)."""
    job = _client().jobs.cancel(job_id)
    click.echo(f"job {job_id}: {job.get('status')} (cancel requested)", err=True)
    click.echo(job_id)


@click.group("backbones")
def backbones() -> None:
    """The backbone registry."""


@backbones.command("list")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def backbones_list(fmt: str) -> None:
    """List the backbones (and fine-tuned models usable as backbones)."""
    rows = _client().backbones.list()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("name", "feature dim", "input", "pretrained", "weights"):
        table.add_column(col)
    for b in rows:
        table.add_row(
            str(b.get("name")),
            str(b.get("feature_dim")),
            str(b.get("input_size")),
            str(b.get("pretrained")),
            str(b.get("weights")),
        )
    _console(err=False).print(table)


@click.command("login")
@click.option("--url", "login_url", default=None, help="service URL, e.g. http://127.0.0.1:8000")
@click.option("--api-key", "login_key", default=None, help="API key (asked for, hidden, when not given)")
@click.option("--verify/--no-verify", default=True, show_default=True, help="check the key against the service")
def login(login_url: str | None, login_key: str | None, verify: bool) -> None:
    """Store the service URL and API key in the user config file (mode 0600)."""
    conn = click.get_current_context().ensure_object(Connection)
    url = login_url or conn.url
    key = login_key or conn.api_key
    if not url:
        url = click.prompt("service URL", default="http://127.0.0.1:8000")
    if not key:
        if not sys.stdin.isatty():
            raise click.UsageError("no API key: pass --api-key or set TLSERVE_API_KEY")
        key = click.prompt("API key", hide_input=True)
    if verify:
        with Client(url, key) as client:
            client.check()  # a wrong key is a 401 here, and nothing is stored
    path = save_config({"url": url.rstrip("/"), "api_key": key})
    click.echo(f"saved the URL and key for {url} in {path} (mode 0600)", err=True)


CLIENT_COMMANDS: tuple[click.Command, ...] = (
    datasets,
    features,
    models,
    aliases,
    predict,
    compare,
    jobs,
    backbones,
    login,
)


def mount(group: click.Group) -> click.Group:
    """Add the client commands to ``group`` (the server's ``tlserve`` mounts them this way)."""
    for command in CLIENT_COMMANDS:
        group.add_command(command)
    return group


@click.group("tlserve-client", cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@connection_options
@click.version_option("0.1.0", prog_name="tlserve-client")
@click.pass_context
def cli(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    """The tlserve command line: datasets, features, models, predictions, comparisons and jobs over the API."""
    init_connection(ctx, url, api_key)


mount(cli)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="tlserve-client")


__all__ = [
    "CLIENT_COMMANDS",
    "OneLineGroup",
    "cli",
    "config_path",
    "connection_options",
    "init_connection",
    "main",
    "mount",
]
