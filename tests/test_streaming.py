"""Streaming: results never depend on batch or block size; stdin streams; start-up imports no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from nncli.io import csvread
from tests.helpers import CONFIGS, assert_error, column, load_json, parse_csv, read_table, write

SPEC = "seed: 4\nlayers:\n  - Linear: {out_features: 6}\n  - ReLU\n  - Linear: {out_features: 3}\n  - Softmax\n"


def make_data(tmp_path, rows=500, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (rows,), generator=g)
    path = tmp_path / "d.csv"
    path.write_text(
        "a,b,c,d,e,y\n" + "".join(",".join(repr(v) for v in r) + f",{int(c)}\n" for r, c in zip(x.tolist(), y.tolist()))
    )
    return path


def reference(path):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3), nn.Softmax(dim=1))
    return model, read_table(path, ["y"]), read_table(path, list("abcde"))[:, 0].long()


@pytest.mark.parametrize("batch_size", [1, 3, 64, 499, 10_000])
def test_forward_in_chunks_equals_one_batch(nncli, tmp_path, batch_size):
    path = make_data(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC)
    rows = parse_csv(nncli("forward", spec, path, "-t", "y", "-b", batch_size).stdout)
    model, x, _ = reference(path)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = np.stack([column(rows, f"prob_{i}") for i in range(3)], 1)
    if batch_size >= 64:
        np.testing.assert_array_equal(got, expected)
    else:  # torch's kernels for a few rows may round the last bit differently from a whole batch
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("batch_size", [1, 7, 100])
def test_loss_and_grads_in_chunks_equal_one_batch(nncli, tmp_path, batch_size):
    path = make_data(tmp_path)
    spec = write(tmp_path, "s.yaml", SPEC.replace("  - Softmax\n", ""))
    model, x, y = reference(path)
    model = model[:3].train()
    loss = nn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    for reduction in ("mean", "sum"):
        doc = load_json(nncli("loss", spec, path, "-t", "y", "-b", batch_size, "--reduction", reduction, "-f", "json"))
        expected = loss.item() if reduction == "mean" else nn.CrossEntropyLoss(reduction="sum")(model(x), y).item()
        assert doc["loss"] == pytest.approx(expected, rel=1e-6)
    doc = load_json(nncli("grads", spec, path, "-t", "y", "-b", batch_size, "-f", "json"))
    assert doc["loss"] == pytest.approx(loss.item(), rel=1e-6)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(
            np.array(doc["gradients"][name], dtype=np.float32), p.grad.numpy(), rtol=1e-5, atol=1e-7
        )


def test_train_mode_batchnorm_and_dropout_are_never_split(nncli, tmp_path):
    path = make_data(tmp_path, rows=50)
    spec = write(
        tmp_path, "s.yaml", "seed: 2\nlayers:\n  - BatchNorm1d\n  - Linear: {out_features: 3}\n  - Dropout: 0.3\n"
    )
    doc = load_json(nncli("grads", spec, path, "-t", "y", "-b", 7, "-f", "json"))
    torch.manual_seed(2)
    model = nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3), nn.Dropout(0.3)).train()
    x, y = read_table(path, ["y"]), read_table(path, list("abcde"))[:, 0].long()
    loss = nn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    assert np.float32(doc["loss"]) == loss.detach().numpy()
    np.testing.assert_array_equal(
        np.array(doc["gradients"]["1.weight"], dtype=np.float32), model[1].weight.grad.numpy()
    )


def test_tiny_blocks_read_the_same_rows(nncli, tmp_path, monkeypatch):
    """Blocks smaller than a line: quoted fields, blank lines and CRLF across block edges."""
    path = make_data(tmp_path, rows=40)
    spec = write(tmp_path, "s.yaml", SPEC)
    expected = nncli("forward", spec, path, "-t", "y", "--id-column", "y").stdout
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = '"a","b",c,d,e,y\n'  # quotes
    lines[3] = lines[3].replace("\n", "\r\n")  # CRLF
    lines[5] = lines[5] + "\n  \n"  # blank lines
    cells = lines[8].split(",")
    lines[8] = ",".join(['"' + cells[0] + '"'] + cells[1:])  # a quoted number
    quoted = tmp_path / "q.csv"
    quoted.write_text("".join(lines))
    monkeypatch.setattr(csvread, "BLOCK_BYTES", 16)
    assert nncli("forward", spec, quoted, "-t", "y", "--id-column", "y").stdout == expected


def test_errors_in_later_blocks_name_the_right_line(nncli, tmp_path, monkeypatch):
    path = make_data(tmp_path, rows=300)
    lines = path.read_text().splitlines()
    cells = lines[250].split(",")
    cells[2] = "oops"
    lines[250] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    spec = write(tmp_path, "s.yaml", SPEC)
    monkeypatch.setattr(csvread, "BLOCK_BYTES", 1024)
    assert_error(nncli("forward", spec, path, "-t", "y"), 1, "d.csv:251", "column 2 ('c'): 'oops' is not a number")


@pytest.mark.slow
def test_standard_input_bigger_than_a_block_streams(tmp_path):
    """A real process reading more than one 4 MiB block from a pipe."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(60_000, 8, generator=g, dtype=torch.float64)
    text = "".join(",".join(repr(v) for v in r) + "\n" for r in x.tolist())
    assert len(text) > csvread.BLOCK_BYTES
    result = subprocess.run(
        [sys.executable, "-m", "nncli", "forward", str(CONFIGS / "sigmoid-8.yaml"), "-", "-f", "csv"],
        input=text.encode(),
        capture_output=True,
        check=True,
    )
    got = np.array([np.float32(line.split(",")[0]) for line in result.stdout.decode().splitlines()[1:]])
    torch.manual_seed(42)
    model = nn.Sequential(nn.Linear(8, 1), nn.Sigmoid()).eval()
    with torch.no_grad():
        expected = model(x.float())[:, 0].numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["forward", "--help"], ["forward"], ["nonsense"]])
def test_start_up_imports_neither_torch_nor_polars(args):
    code = (
        "import sys\nfrom nncli.cli.app import app\n"
        f"sys.argv = ['nncli'] + {args!r}\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'polars', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_pipe_into_head_ends_quietly(tmp_path):
    path = make_data(tmp_path, rows=200_000 // 4)
    spec = write(tmp_path, "s.yaml", SPEC)
    result = subprocess.run(f"nncli forward {spec} {path} -t y | head -1", shell=True, capture_output=True, text=True)
    assert result.stdout == "prob_0,prob_1,prob_2,class\n"
    assert result.stderr == ""


def test_devices_and_threads(nncli, tmp_path):
    path = make_data(tmp_path, rows=20)
    spec = write(tmp_path, "s.yaml", SPEC)
    plain = nncli("forward", spec, path, "-t", "y").stdout
    assert nncli("forward", spec, path, "-t", "y", "--device", "auto", "--threads", "1").stdout == plain
    if not torch.cuda.is_available():
        assert_error(nncli("forward", spec, path, "-t", "y", "--device", "cuda"), 1, "CUDA is not available")
    assert_error(nncli("forward", spec, path, "-t", "y", "--device", "tpu"), 2, "--device")


def test_progress_bar_only_on_a_terminal(monkeypatch):
    from nncli.views import progress

    class Source:
        name, bytes_read, total_bytes = "x.csv", 10, 100

    items = [[1, 2]] * 5
    assert list(progress.tracked(iter(items), Source(), quiet=False)) == items  # not a terminal: passes through
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    started = []
    real_start = progress._start
    monkeypatch.setattr(progress, "_start", lambda source: started.append(1) or real_start(source))
    assert list(progress.tracked(iter(items), Source(), quiet=False)) == items
    assert started == [1]
    started.clear()
    assert list(progress.tracked(iter(items), Source(), quiet=True)) == items
    assert started == []


def _fed(fifo, data: bytes):
    """A writer that feeds `data` into the FIFO once, as `cat file > fifo &` does."""
    import threading

    def feed():
        with open(fifo, "wb") as f:
            f.write(data)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return writer


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs FIFOs")
def test_commands_that_read_twice_copy_a_named_pipe_once(tmp_path):
    """train (and step) read DATA more than once: a FIFO's second open waited for ever for a writer
    that had finished. They copy it first, as they copy standard input; a gzip FIFO stays gzip."""
    import gzip
    import os

    nncli_script = os.path.join(os.path.dirname(sys.executable), "nncli")
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    data = make_data(tmp_path, rows=300)
    fifo = tmp_path / "pipe.csv"
    runs = {}
    for name, source, content in (("file", data, None), ("fifo", fifo, data.read_bytes())):
        if content is not None:
            os.mkfifo(fifo)
            writer = _fed(fifo, content)
        weights = tmp_path / f"{name}.safetensors"
        runs[name] = subprocess.run(
            [
                nncli_script,
                "train",
                str(spec),
                str(source),
                "-t",
                "y",
                "--epochs",
                "2",
                "--lr",
                "0.1",
                "--save-weights",
                str(weights),
            ],
            capture_output=True,
            timeout=120,
        )
        assert runs[name].returncode == 0, runs[name].stderr
        runs[name] = (runs[name].stdout, weights.read_bytes())
        if content is not None:
            writer.join(timeout=10)
            fifo.unlink()
    assert runs["fifo"] == runs["file"]

    packed = tmp_path / "d.csv.gz"
    packed.write_bytes(gzip.compress(data.read_bytes()))
    piped = tmp_path / "pipe.csv.gz"
    os.mkfifo(piped)
    _fed(piped, packed.read_bytes())
    step = [nncli_script, "step", str(spec)]
    through_pipe = subprocess.run(step + [str(piped), "-t", "y", "--lr", "0.1"], capture_output=True, timeout=120)
    from_file = subprocess.run(step + [str(packed), "-t", "y", "--lr", "0.1"], capture_output=True, timeout=120)
    assert through_pipe.returncode == 0, through_pipe.stderr
    assert through_pipe.stdout == from_file.stdout
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs FIFOs")
def test_an_error_in_a_copied_pipe_names_the_pipe(tmp_path):
    import os

    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    _fed(fifo, b"a,b,c,d,e,y\n1,2,3,4,oops,0\n")
    done = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "nncli"),
            "train",
            str(spec),
            str(fifo),
            "-t",
            "y",
            "--epochs",
            "1",
            "--lr",
            "0.1",
        ],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 1
    line = done.stderr.decode().strip()
    assert line.startswith("error: ") and f"({fifo}:2)" in line, line


@pytest.mark.slow
def test_a_targets_file_on_standard_input_is_read_whole_every_time(tmp_path):
    """`--targets -` with train or step: the targets were read twice from standard input, and the
    second read found it empty ("the file is empty"). Now copied once, like DATA on standard input."""
    import os

    nncli_script = os.path.join(os.path.dirname(sys.executable), "nncli")
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    data = make_data(tmp_path, rows=200)
    rows = [line.rsplit(",", 1) for line in data.read_text().splitlines()]
    features, targets = tmp_path / "x.csv", tmp_path / "y.csv"
    features.write_text("".join(f"{x}\n" for x, _ in rows))
    targets.write_text("".join(f"{y}\n" for _, y in rows))
    for command in (["train", "--epochs", "2", "--lr", "0.1"], ["step", "--lr", "0.1"]):
        args = [nncli_script, command[0], str(spec), str(features), *command[1:]]
        from_file = subprocess.run(args + ["--targets", str(targets)], capture_output=True, timeout=120)
        from_stdin = subprocess.run(
            args + ["--targets", "-"], input=targets.read_bytes(), capture_output=True, timeout=120
        )
        assert from_file.returncode == 0, from_file.stderr
        assert from_stdin.returncode == 0, from_stdin.stderr
        assert from_stdin.stdout == from_file.stdout
    both = subprocess.run(
        [nncli_script, "train", str(spec), "-", "--targets", "-", "--epochs", "1", "--lr", "0.1"],
        input=features.read_bytes(),
        capture_output=True,
        timeout=120,
    )
    assert both.returncode == 2 and both.stderr.decode().splitlines() == [
        "error: DATA and --targets can't both be standard input",
        "Try 'nncli train --help'",
    ]


def test_the_library_leaves_the_callers_read_as_it_was(tmp_path, monkeypatch):
    """train copies standard input to a temporary file; the caller's Read must not end up naming it."""
    import io

    import nncli
    from nncli import Read

    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    data = make_data(tmp_path, rows=100)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.read_bytes())))
    read = Read(target="y")
    nncli.train(nncli.load(spec), "-", epochs=1, lr=0.1, read=read)
    assert read == Read(target="y")


# -- one batching rule: DataLoader(batch_size=N, drop_last=False) ----------------------------------


def _loader(x, y, n):
    """The hand-written loop's batches: torch's DataLoader, in order, the last batch shorter."""
    from torch.utils.data import DataLoader, TensorDataset

    return list(DataLoader(TensorDataset(x, y), batch_size=n, shuffle=False, drop_last=False))


@pytest.mark.parametrize("rows, batch_size", [(20, 7), (1000, 300)])
def test_every_command_batches_as_a_dataloader_does(nncli, tmp_path, rows, batch_size):
    """20 rows with -b 7 are batches of 7, 7 and 6 (not 7 and 13); 1000 with -b 300: 300, 300, 300, 100.
    A mean over several batches is the per-batch sums added in order, divided once."""
    path = make_data(tmp_path, rows=rows)
    spec = write(tmp_path, "s.yaml", SPEC.replace("  - Softmax\n", "loss: CrossEntropyLoss\n"))
    model, x, y = reference(path)
    model = model[:3]
    batches = _loader(x, y, batch_size)
    assert [len(b[0]) for b in batches][-1] == rows % batch_size  # the rows don't divide
    common = [spec, path, "-t", "y", "-b", batch_size, "-f", "json"]

    def summed(module, reduction="sum"):
        total = None
        for xb, yb in batches:
            value = nn.CrossEntropyLoss(reduction=reduction)(module(xb), yb)
            total = value if total is None else total + value
        return total

    with torch.no_grad():
        mean = summed(model.eval()) / rows
        total = summed(model)
        probs = torch.cat([model(xb).softmax(dim=1) for xb, _ in batches]).numpy()
    assert np.float32(load_json(nncli("loss", *common))["loss"]) == mean.numpy()
    assert np.float32(load_json(nncli("loss", *common, "--reduction", "sum"))["loss"]) == total.numpy()
    assert np.float32(load_json(nncli("evaluate", *common))["loss"]) == mean.numpy()
    out = parse_csv(nncli("forward", spec, path, "-t", "y", "-b", batch_size, "-f", "csv").stdout)
    np.testing.assert_array_equal(np.stack([column(out, f"prob_{i}") for i in range(3)], 1), probs)

    model.train().zero_grad()
    with torch.no_grad():
        loss = summed(model) / rows
    for xb, yb in batches:  # each batch's sum backward (.grad accumulates), then one division, as the loss
        nn.CrossEntropyLoss(reduction="sum")(model(xb), yb).backward()
    grads = {name: p.grad / rows for name, p in model.named_parameters()}
    doc = load_json(nncli("grads", *common))
    assert np.float32(doc["loss"]) == loss.detach().numpy()
    for name, g in grads.items():
        np.testing.assert_array_equal(np.array(doc["gradients"][name], dtype=np.float32), g.numpy())
    doc = load_json(nncli("step", *common, "--lr", "0.1"))
    assert np.float32(doc["loss_before"]) == loss.detach().numpy()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.sub_(0.1 * grads[name])
            np.testing.assert_array_equal(np.array(doc["parameters"][name]["after"], dtype=np.float32), p.numpy())
        assert np.float32(doc["loss_after"]) == (summed(model) / rows).numpy()

    # train --stream: one optimizer step per DataLoader batch, file order
    out = tmp_path / "w.safetensors"
    nncli(
        "train",
        spec,
        path,
        "-t",
        "y",
        "-b",
        batch_size,
        "--lr",
        "0.1",
        "--epochs",
        "2",
        "--stream",
        "--save-weights",
        out,
        "-f",
        "json",
    )
    model, _, _ = reference(path)
    model = model[:3].train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        for xb, yb in batches:
            opt.zero_grad()
            nn.CrossEntropyLoss()(model(xb), yb).backward()
            opt.step()
    from safetensors.torch import load_file

    saved = load_file(out)
    for name, p in model.state_dict().items():
        assert torch.equal(saved[name], p), name


@pytest.mark.parametrize("command", ["forward", "loss", "grads", "step", "evaluate"])
def test_batch_size_help_states_the_dataloader_rule(nncli, command):
    assert "DataLoader(batch_size=N)" in nncli(command, "--help").stdout
