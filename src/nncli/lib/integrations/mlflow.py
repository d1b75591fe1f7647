"""train's MLflow run (--mlflow): settings, a look at the tracking store first, the run itself."""

from __future__ import annotations

import os

from nncli.errors import NncliError, UsageError
from nncli.io.frames import is_table


def mlflow_settings(settings) -> dict:
    """train's `mlflow=`: True, or a dict of `experiment` (a name; created if new), `run_name` and
    `artifact` (the weights' file name in the run, whose suffix picks the format). MLflow is imported here."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UsageError("--mlflow needs MLflow: pip install 'nncli-torch[mlflow]'") from None
    settings = dict(settings) if isinstance(settings, dict) else {}
    unknown = set(settings) - {"experiment", "run_name", "artifact"}
    if unknown:
        raise UsageError(f"mlflow= takes experiment, run_name and artifact, not {', '.join(sorted(unknown))}")
    artifact = settings.setdefault("artifact", None) or "weights.safetensors"
    if os.path.basename(artifact) != artifact:
        raise UsageError(f"the MLflow weights artifact is a file name, not a path: {artifact!r}")
    from nncli.core.model import check_weights_path

    check_weights_path(artifact)
    settings["artifact"] = artifact
    return settings


def mlflow_preflight() -> None:
    """The tracking store, looked at before any data is read, so that a store MLflow cannot use is
    one line at once: an sqlite file that is a device, not a database, or not creatable (MLflow's
    sqlalchemy errors were internal errors), and an http(s) server that does not answer a connection
    (MLflow retries for 256 s first, silently). Anything subtler is left to MLflow's own messages."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "sqlite":
        _check_sqlite_store(uri)
    elif scheme in ("http", "https"):
        _check_server_answers(uri)


def _check_sqlite_store(uri: str) -> None:
    import tempfile
    from urllib.parse import unquote

    path = unquote(uri.split("?", 1)[0][len("sqlite:///") :]) if uri.lower().startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        return
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise NncliError(f"MLflow: the tracking database {path} is not a regular file", "--mlflow")
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise NncliError(
                f"MLflow: cannot read the tracking database {path}: {e.strerror or e}", "--mlflow"
            ) from None
        if head and head != b"SQLite format 3\x00":  # an empty file is a new database to sqlite
            raise NncliError(f"MLflow: the tracking database {path} is not an SQLite database", "--mlflow")
        return
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, probe = tempfile.mkstemp(prefix=".nncli-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise NncliError(f"MLflow: cannot create the tracking database {path}: {e.strerror or e}", "--mlflow") from None


def _check_server_answers(uri: str) -> None:
    """One TCP connection, 5 s at most, to the server (not through a proxy, which MLflow would use)."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return  # a malformed port: MLflow's own message
    if not host or (urllib.request.getproxies().get(parts.scheme.lower()) and not urllib.request.proxy_bypass(host)):
        return
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:  # the host and port only: the URI may hold a password
        reason = e.strerror or ("timed out" if isinstance(e, TimeoutError) else type(e).__name__)
        raise NncliError(f"MLflow: the tracking server {host}:{port} does not answer ({reason})", "--mlflow") from None


def guarded(call, *args, **kwargs):
    """call(...), MLflow's own errors (a store it refuses, a server not there) as one line."""
    from mlflow.exceptions import MlflowException

    try:
        return call(*args, **kwargs)
    except MlflowException as e:  # where: not the tracking URI, which may hold a database password
        raise NncliError(
            f"MLflow: {_without_password((e.message.strip().splitlines() or ['?'])[0])}", "--mlflow"
        ) from None
    except ImportError as e:  # a database URI whose driver is not installed (psycopg, pymysql, ...)
        raise NncliError(
            f"MLflow: the tracking URI needs a module that is not installed: {e.name or e}", "--mlflow"
        ) from None
    except Exception as e:  # the database's own errors (a disk full mid-run, a locked file) that MLflow lets through
        if not type(e).__module__.startswith("sqlalchemy"):
            raise
        text = str(getattr(e, "orig", None) or e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        raise NncliError(
            f"MLflow: the tracking database: {_without_password(first)}",
            "--mlflow",
        ) from None


def mlflow_run(settings, model, params: dict, on_epoch, stack):
    """A run where MLflow itself would put it: MLFLOW_TRACKING_URI, else MLflow's default store; the
    experiment named, else MLFLOW_EXPERIMENT_NAME/_ID or mlflow.set_experiment's, else Default; a
    child run of an active run. Logged: the parameters (those given), every number of the history per
    epoch (step = the epoch, the values the history holds), and the weights as an artifact (by
    `log_weights()`, written as Model.save writes them). The run ends FINISHED, KILLED on
    KeyboardInterrupt, FAILED on any other error."""
    import mlflow

    settings = mlflow_settings(settings)

    experiment_id = None
    if settings.get("experiment"):
        found = guarded(mlflow.get_experiment_by_name, settings["experiment"])
        experiment_id = found.experiment_id if found else guarded(mlflow.create_experiment, settings["experiment"])
    run_id = guarded(
        mlflow.start_run,
        experiment_id=experiment_id,
        run_name=settings.get("run_name"),
        nested=mlflow.active_run() is not None,
    ).info.run_id

    def ended(kind, error, trace) -> bool:
        status = "FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
        try:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                guarded(mlflow.end_run, status)
            else:  # a callback ended or replaced it: end ours, never the caller's
                guarded(mlflow.MlflowClient().set_terminated, run_id, status)
        except NncliError:
            if kind is None:
                raise
        return False  # never swallows the error that ended the run

    stack.push(ended)
    from nncli.io.output import called_on_signal

    # the CLI leaves at once on Ctrl-C (nothing unwinds): the run is told it was killed from there
    stack.enter_context(called_on_signal(lambda: mlflow.MlflowClient().set_terminated(run_id, "KILLED")))

    def files(
        value,
    ):  # DATA and val as given (nothing for a table in memory); a long list shortened, under MLflow's limit
        if value is None or is_table(value):
            return None
        names = [os.fspath(v) for v in value] if isinstance(value, (list, tuple)) else [os.fspath(value)]
        joined = " ".join(names)
        return joined if len(joined) <= 1000 else f"{names[0]} ... {names[-1]} ({len(names)} files)"

    params = {**params, "data": files(params.get("data")), "val": files(params.get("val"))}
    guarded(mlflow.log_params, {k: v for k, v in params.items() if v is not None}, run_id=run_id)

    def logged(record) -> None:
        numbers = {k: float(v) for k, v in record.as_dict().items() if k != "epoch"}  # float32 losses widen exactly
        guarded(mlflow.log_metrics, numbers, step=record.epoch, run_id=run_id)
        if on_epoch is not None:
            on_epoch(record)

    def log_weights() -> None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="nncli-mlflow-") as folder:
            path = os.path.join(folder, settings["artifact"])
            model.save(path, what="the MLflow weights artifact")
            guarded(mlflow.log_artifact, path, run_id=run_id)
        if model.schema is not None:  # the columns the model reads, readable in the run's artifacts
            guarded(mlflow.log_dict, model.schema.to_dict(), "input_schema.json", run_id=run_id)

    return logged, log_weights


def _without_password(text: str) -> str:
    """MLflow's messages quote the tracking URI, credentials included: scheme://user:secret@ -> scheme://***@."""
    import re

    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@", r"\1***@", text)
