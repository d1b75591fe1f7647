"""`nncli train --engine ray --workers N`: the ranks of `--nproc N` as Ray Train workers. A local
Ray cluster is started for the command and shut down with it; Ray Train's TorchTrainer sets up the
process group (gloo) and each worker runs the train command's own `fit_rank`, so the rows each
rank takes, the seeds and the all-reduce are --nproc's and so are the weights, bit for bit. Rank 0
writes the files (--save-weights, --checkpoint, --log-dir) and sends back the history, which is
reported here. Process management at the edge, as cli/launch.py is for --nproc."""

from __future__ import annotations

import os

from nncli.errors import NncliError, UsageError

# Each worker asks Ray for half a CPU, a fraction as lib/engines/ray.py's actors ask: N workers (at most one
# per CPU, as --nproc) then always fit in the cluster, whatever else holds a CPU there, and never wait for one
# (Ray Train's own actors ask for none). Ray sets OMP_NUM_THREADS=1 in each; --threads still sets torch's.
CPUS_PER_WORKER = 0.5


def check_engine(engine: str | None, workers: int | None, nproc: int | None, device: str) -> None:
    """train's --engine, --workers and --nproc make sense together (usage errors, before any work)."""
    if engine is None:
        if workers is not None:
            raise UsageError("--workers goes with --engine ray (local processes: --nproc N)")
        return
    if engine != "ray":
        raise UsageError(f"train's --engine must be ray (Ray Train), got {engine!r}")
    if nproc is not None:
        raise UsageError("--engine ray trains in --workers N Ray workers, --nproc N in local processes: give one")
    if device not in ("cpu", "auto"):  # the workers are given no GPU (ScalingConfig(use_gpu=False))
        raise UsageError(f"--engine ray trains on CPU (gloo): --device {device} is not supported with it")


def train_on_ray(fit_rank, args: tuple, workers: int | None, files: dict):
    """Run `fit_rank(*args)` in `workers` Ray Train workers (default: one per CPU); rank 0's
    (History, model caption). Its warnings are shown here, as a rank 0 of --nproc shows them."""
    import functools
    import shutil
    import tempfile

    from nncli.cli.launch import _check_launch, _cpus
    from nncli.io.output import called_on_signal

    ray, train_torch, ray_train = _require()
    cpus = _cpus()
    workers = workers or cpus
    _check_launch(workers, files, "--engine ray")
    # Ray Train's run folder (else ~/ray_results/), removed after
    storage = tempfile.mkdtemp(prefix=f"nncli-ray-train-{os.getpid()}-")
    remove = functools.partial(shutil.rmtree, storage, ignore_errors=True)

    def on_signal() -> None:
        """Ctrl-C or SIGTERM ends nncli at once (the CLI's handler): the run folder goes, and the local
        cluster is shut down (its node processes die with nncli anyway; two of their helpers, the
        dashboard and runtime-env agents, stayed behind when they were only killed)."""
        remove()
        ray.shutdown()

    with called_on_signal(on_signal):
        try:
            return _train(ray, train_torch, ray_train, fit_rank, args, workers, cpus, storage)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            remove()


def _train(ray, train_torch, ray_train, fit_rank, args: tuple, workers: int, cpus: int, storage: str):
    """The local cluster started, the workers run, rank 0's result or the first failed rank's error."""
    import logging

    from nncli.cli.commands.common import warn

    try:
        # a cluster of its own (address="local": never one that RAY_ADDRESS names); Ray's log lines stay in
        # its session folder: standard error carries nncli's lines only
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            object_store_memory=128 * 2**20,  # only rank 0's history travels through it
        )
    except Exception as e:  # noqa: BLE001  Ray's own errors for a cluster that did not start are many
        raise NncliError(f"cannot start a local Ray cluster: {_first_line(e)}", "--engine ray") from None
    trainer = train_torch.TorchTrainer(
        _worker,
        train_loop_config={"fit_rank": fit_rank, "args": args, "cwd": os.getcwd()},
        scaling_config=ray_train.ScalingConfig(
            num_workers=workers, use_gpu=False, resources_per_worker={"CPU": CPUS_PER_WORKER}
        ),
        torch_config=train_torch.TorchConfig(backend="gloo"),
        run_config=ray_train.RunConfig(
            name="nncli-train", storage_path=storage, failure_config=ray_train.FailureConfig(max_failures=0)
        ),
    )
    try:
        result = _off_the_main_thread(trainer.fit)
    except ray_train.WorkerGroupError as e:
        rank = min(e.worker_failures)
        failure = e.worker_failures[rank]
        if isinstance(failure, NncliError):  # a rank's error as --nproc reports it; a usage error stays one
            raise type(failure)(f"rank {rank}: {failure.message}", "--engine ray") from None
        raise failure from None
    except ray_train.TrainingFailedError as e:
        raise NncliError(f"Ray Train failed: {_first_line(e)}", "--engine ray") from None
    history, caption, said = result.return_value
    for message in said:
        warn(message)
    return history, caption


def _off_the_main_thread(fit):
    """`fit()` in a thread of its own, waited for here: TorchTrainer.fit, called on the main thread,
    replaces the CLI's SIGINT handler with its own, which aborts the run and exits 1 without a word
    (and is left in place after); the CLI's own ends the command as every other (exit 130)."""
    import threading

    out: dict = {}

    def run() -> None:
        try:
            out["result"] = fit()
        except BaseException as e:  # noqa: BLE001  raised again on the main thread
            out["error"] = e

    thread = threading.Thread(target=run, name="nncli-ray-train", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # a timeout: the main thread stays free to run a signal handler
    if "error" in out:
        raise out["error"]
    return out["result"]


def _worker(config: dict):
    """One Ray Train worker: a rank of --nproc, in the command's folder (Ray starts it in the run's
    folder; DATA and the outputs are named relative to where nncli runs). Rank 0 returns the history,
    the caption and the warnings it issued (a worker's standard error is not the command's)."""
    import warnings

    from nncli.errors import NncliWarning

    os.chdir(config["cwd"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")  # torch's own warnings: nncli's stderr carries only nncli's lines
        warnings.simplefilter("always", NncliWarning)
        rank, history, checked = config["fit_rank"](*config["args"])
    if rank:
        return None
    return history, checked.model.caption, [str(w.message) for w in caught if issubclass(w.category, NncliWarning)]


def _require():
    """Ray and Ray Train (ray.train.torch), or one line saying what to install."""
    try:
        import ray
    except ImportError:
        raise NncliError("ray is not installed: pip install 'nncli-torch[ray]'", "--engine ray") from None
    try:
        import ray.train as ray_train
        import ray.train.torch as train_torch
    except ImportError as e:  # ray without its train extra (pydantic, ...)
        raise NncliError(
            f"Ray Train cannot be imported ({_first_line(e)}): pip install 'nncli-torch[ray]'", "--engine ray"
        ) from None
    return ray, train_torch, ray_train


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
