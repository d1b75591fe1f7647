"""One rule for every file nncli writes (src/nncli/io/output.py).

Regular files are replaced atomically, symbolic links are followed, devices, FIFOs and
/dev/stdout are written through as a shell's `>` does, permissions are a shell's, every refusal
is one `error:` line with exit 1 naming the path, and a killed run's temporary files can be told
apart and swept. Runs as root here: nothing below may touch the system's /dev/null unless the
same rule was first proved on a character device made in tmp_path.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from nncli.errors import NncliError, UsageError
from nncli.io import output
from nncli.io.output import (
    abandon_writes,
    check_distinct_outputs,
    check_output,
    output_file,
    plan,
    remove_stale_temp_files,
    stale_temp_files,
)
from tests.helpers import CONFIGS, DATA, assert_error

ROOT = os.geteuid() == 0
NNCLI = [sys.executable, "-m", "nncli"]


def write(path, data: bytes, option="-o") -> None:
    with output_file(str(path), option) as f:
        f.write(data)


def make_char_device(path) -> None:
    """A character device like /dev/null (1, 3) in tmp_path, or skip where mknod is not allowed."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod of a character device needs root")


def refusal(path, *fragments, inputs=(), force=False, option="-o") -> NncliError:
    with pytest.raises(NncliError) as caught:
        check_output(str(path), inputs, force, option)
    e = caught.value
    assert not isinstance(e, UsageError), "every file refusal exits 1"
    for fragment in fragments:
        assert fragment in e.message, (fragment, e.message)
    return e


def temps(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


# -- 1. what exists and is not a regular file is written through -----------------------------------


def test_a_character_device_is_written_through_never_replaced(tmp_path):
    dev = tmp_path / "null"
    make_char_device(dev)
    before = os.lstat(dev)
    assert plan(str(dev)).kind == "through"
    write(dev, b"gone\n")
    after = os.lstat(dev)
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino and after.st_rdev == before.st_rdev
    assert temps(tmp_path) == []


def test_a_link_to_a_character_device_is_written_through(tmp_path):
    dev, link = tmp_path / "null", tmp_path / "out.csv"
    make_char_device(dev)
    link.symlink_to(dev)
    write(link, b"gone\n")
    assert link.is_symlink() and os.readlink(link) == str(dev)
    assert stat.S_ISCHR(os.stat(dev).st_mode)


def test_the_system_dev_null_stays_a_character_device(tmp_path, nncli):
    # Only once the rule holds on a device of our own: a wrong rule would replace the real one.
    test_a_character_device_is_written_through_never_replaced(tmp_path)
    assert plan("/dev/null").kind == "through"
    before = os.stat("/dev/null")
    assert stat.S_ISCHR(before.st_mode)
    result = nncli("onehot", "-", "-o", "/dev/null", input="0\n1\n")
    assert result.exit_code == 0, result.stderr
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino and after.st_rdev == before.st_rdev


def test_a_write_error_through_a_device_is_one_error_line(tmp_path, nncli):
    full = tmp_path / "full"
    try:
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # like /dev/full: every write is ENOSPC
    except PermissionError:
        pytest.skip("mknod of a character device needs root")
    result = nncli("onehot", "-", "-o", full, input="0\n1\n")
    assert_error(result, 1, "No space left")
    assert result.stderr.strip().endswith(f"({full})")  # where: the file, as every error line says
    assert stat.S_ISCHR(os.stat(full).st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    "args",
    [["onehot", "0", "1"], ["forward", str(CONFIGS / "three-class.yaml"), str(DATA / "table-5x6.csv"), "-t", "label"]],
)
def test_a_full_standard_output_is_named_in_the_error(args):
    """`> /dev/full`: the shell's redirection, nncli's standard output. The error line says where."""
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "nncli", *args], stdout=full, stderr=subprocess.PIPE, timeout=120)
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == ["error: No space left on device (<stdout>)"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
@pytest.mark.parametrize("through_link", [False, True], ids=["device", "link"])
def test_a_full_disk_under_parquet_and_arrow_is_named_like_csv(tmp_path, fmt, through_link):
    """polars' own writers raised ComputeError (parquet: "internal error") or an OSError without the
    path (arrow): the same one line as CSV gives, the path the user gave named."""
    target = "/dev/full"
    if through_link:
        target = str(tmp_path / f"out.{fmt}")
        os.symlink("/dev/full", target)
    done = subprocess.run(
        [
            *NNCLI,
            "forward",
            str(CONFIGS / "three-class.yaml"),
            str(DATA / "table-5x6.csv"),
            "-t",
            "label",
            "-o",
            target,
            "-f",
            fmt,
        ],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [f"error: No space left on device ({target})"]


def _reader(fifo, into: list):
    def read():
        with open(fifo, "rb") as f:
            into.append(f.read())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def test_a_fifo_is_written_through_to_its_reader(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list = []
    reader = _reader(fifo, got)
    write(fifo, b"a,b\n1,2\n")
    reader.join(timeout=20)
    assert not reader.is_alive() and got == [b"a,b\n1,2\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.listdir(tmp_path) == ["pipe"]


def test_checking_a_fifo_does_not_open_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    done = threading.Event()

    def check():
        check_output(str(fifo), [], False, "-o")  # an open() would block here: no reader
        done.set()

    threading.Thread(target=check, daemon=True).start()
    assert done.wait(timeout=20), "check_output opened the FIFO"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_fifo_through_the_cli_reaches_its_reader(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list = []
    reader = _reader(fifo, got)
    proc = subprocess.run([*NNCLI, "onehot", "-", "-o", str(fifo)], input=b"0\n1\n", capture_output=True, timeout=60)
    reader.join(timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert got == [b"class_0,class_1\n1,0\n0,1\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_dev_stdout_prints_the_output_in_a_real_process(tmp_path):
    assert os.path.islink("/dev/stdout")
    proc = subprocess.run(
        [*NNCLI, "onehot", "-", "-o", "/dev/stdout"], input=b"0\n1\n", capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"class_0,class_1\n1,0\n0,1\n"
    assert os.path.islink("/dev/stdout")


def test_dev_stdout_appended_to_a_file_keeps_what_was_there(tmp_path):
    # `nncli ... -o /dev/stdout >> log`: the descriptor is duplicated, not reopened (which truncates).
    log = tmp_path / "log"
    log.write_bytes(b"earlier\n")
    with open(log, "ab") as out:
        proc = subprocess.run(
            [*NNCLI, "onehot", "-", "-o", "/dev/stdout"], input=b"0\n", stdout=out, stderr=subprocess.PIPE, timeout=60
        )
    assert proc.returncode == 0, proc.stderr
    assert log.read_bytes() == b"earlier\nclass_0\n1\n"
    assert os.listdir(tmp_path) == ["log"]


def test_dev_fd_n_writes_to_that_descriptor(tmp_path):
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [*NNCLI, "onehot", "-", "-o", f"/dev/fd/{w}"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(w,)
        )
        os.close(w)
        proc.stdin.write(b"1\n0\n")
        proc.stdin.close()
        with os.fdopen(r, "rb") as f:
            got = f.read()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        with pytest.raises(OSError):
            os.close(w)
    assert got == b"class_0,class_1\n0,1\n1,0\n"


def test_a_closed_descriptor_is_refused():
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    refusal(f"/dev/fd/{fd}", "file descriptor that is not open", f"/dev/fd/{fd}")


def test_a_socket_is_refused(tmp_path):
    import socket

    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        refusal(path, "socket", str(path))


# -- 2. symbolic links ------------------------------------------------------------------------------


def test_a_link_is_followed_its_target_replaced_atomically_in_the_targets_folder(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    target, link = there / "real.csv", here / "out.csv"
    target.write_bytes(b"old\n")
    link.symlink_to(os.path.join("..", "there", "real.csv"))  # relative, as users make them
    with output_file(str(link), "-o") as f:
        f.write(b"new\n")
        assert temps(here) == [] and len(temps(there)) == 1  # beside the target: a rename cannot cross devices
        assert target.read_bytes() == b"old\n"
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "there", "real.csv")
    assert target.read_bytes() == b"new\n"
    assert temps(here) == temps(there) == []


def test_a_chain_of_links_reaches_the_last_target(tmp_path):
    target = tmp_path / "real.csv"
    target.write_bytes(b"old\n")
    (tmp_path / "b").symlink_to("real.csv")
    (tmp_path / "a").symlink_to("b")
    write(tmp_path / "a", b"new\n")
    assert os.readlink(tmp_path / "a") == "b" and os.readlink(tmp_path / "b") == "real.csv"
    assert target.read_bytes() == b"new\n"


def test_a_dangling_link_is_refused_and_nothing_is_created(tmp_path, nncli):
    link = tmp_path / "out.csv"
    link.symlink_to("missing.csv")
    refusal(link, "is a dangling symbolic link", str(link))
    with pytest.raises(NncliError):
        write(link, b"x")
    assert_error(nncli("onehot", "-", "-o", link, input="0\n"), 1, "dangling symbolic link", str(link))
    assert sorted(os.listdir(tmp_path)) == ["out.csv"] and link.is_symlink()


def test_a_link_loop_is_refused(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    refusal(tmp_path / "a", "symbolic links", str(tmp_path / "a"))


# -- 3. permissions ---------------------------------------------------------------------------------


@pytest.fixture
def umask():
    def set_to(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    os.umask(old)
    yield set_to
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o000])
def test_a_new_file_gets_the_mode_a_shell_gives(tmp_path, umask, mask):
    umask(mask)
    assert output.current_umask() == mask
    write(tmp_path / "new.csv", b"x")
    subprocess.run(["sh", "-c", f"umask {mask:03o}; : > shell.csv"], cwd=tmp_path, check=True)
    assert stat.S_IMODE(os.stat(tmp_path / "new.csv").st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(tmp_path / "new.csv").st_mode) == stat.S_IMODE(os.stat(tmp_path / "shell.csv").st_mode)


@pytest.mark.parametrize(
    "mode, kept", [(0o640, 0o640), (0o600, 0o600), (0o755, 0o755), (0o4755, 0o755), (0o2775, 0o775), (0o6777, 0o777)]
)
def test_an_existing_file_keeps_its_mode_without_setuid_and_setgid(tmp_path, umask, mode, kept):
    umask(0o077)  # must not matter for an existing file
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    os.chmod(path, mode)
    write(path, b"new")
    assert stat.S_IMODE(os.stat(path).st_mode) == kept
    assert path.read_bytes() == b"new"


def test_a_private_file_is_never_readable_by_others_while_it_is_rewritten(tmp_path, umask):
    umask(0o000)
    path = tmp_path / "secret.csv"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    with output_file(str(path)) as f:
        f.write(b"new secret")
        (tmp,) = temps(tmp_path)
        assert stat.S_IMODE(os.stat(tmp_path / tmp).st_mode) & 0o077 == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.skipif(not ROOT, reason="only root can give a file to another user")
def test_root_keeps_an_existing_files_owner(tmp_path):
    path = tmp_path / "theirs.csv"
    path.write_bytes(b"old")
    os.chown(path, 65534, 65534)
    write(path, b"new")
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (65534, 65534) and path.read_bytes() == b"new"


def _shell_can_write(path) -> bool:
    return subprocess.run(["sh", "-c", ': > "$1"', "sh", str(path)], capture_output=True).returncode == 0


def test_a_read_only_file_is_refused_exactly_when_a_shell_refuses_it(tmp_path):
    path = tmp_path / "ro.csv"
    path.write_bytes(b"old")
    os.chmod(path, 0o444)
    probe = tmp_path / "probe.csv"  # the shell's verdict, on a twin (its `>` would empty the file)
    probe.write_bytes(b"")
    os.chmod(probe, 0o444)
    if _shell_can_write(probe):  # root: a root shell writes a 0o444 file, so nncli does too
        check_output(str(path))
        write(path, b"new")
        assert path.read_bytes() == b"new" and stat.S_IMODE(os.stat(path).st_mode) == 0o444
    else:
        refusal(path, "permission denied", str(path))
        assert path.read_bytes() == b"old"


@pytest.mark.skipif(ROOT, reason="root writes a 0o444 file, as a root shell does; covered as another user below")
def test_a_read_only_file_is_refused_for_a_user(tmp_path):
    path = tmp_path / "ro.csv"
    path.write_bytes(b"old")
    os.chmod(path, 0o444)
    refusal(path, "permission denied", str(path))


def _verdicts_as(uid: int, paths: list[str]) -> dict:
    """check_output's verdicts on paths, as another user: a forked child drops root (no exec, so the
    interpreter need not be readable by that user)."""
    import json

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = {}
            for p in paths:
                try:
                    check_output(p, [], False, "-o")
                    out[p] = "ok"
                except NncliError as e:
                    out[p] = e.message
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.skipif(not ROOT or not hasattr(os, "fork"), reason="needs root to run a check as another user")
def test_as_another_user_refusals_match_the_shell():
    import shutil
    import tempfile

    nobody = 65534
    folder = tempfile.mkdtemp(prefix="nncli-user-")  # in /tmp: tmp_path's parents are root's, 0o700
    try:
        os.chmod(folder, 0o755)
        os.chown(folder, nobody, nobody)
        for name, mode in (("mine.csv", 0o644), ("ro.csv", 0o444)):
            path = os.path.join(folder, name)
            with open(path, "w"):
                pass
            os.chmod(path, mode)
            os.chown(path, nobody, nobody)
        os.mkdir(os.path.join(folder, "locked"), 0o755)  # root's: nobody may not create in it
        theirs = os.path.join(folder, "locked", "theirs.csv")  # nobody's file, in root's folder
        with open(theirs, "w"):
            pass
        os.chown(theirs, nobody, nobody)
        paths = [os.path.join(folder, n) for n in ("mine.csv", "ro.csv", "new.csv", "locked/new.csv")]
        verdicts = _verdicts_as(nobody, paths + [theirs])
        # The one place nncli is stricter than `>`: a file it may write in a folder it may not
        # write cannot be replaced atomically, and a write in place could leave it half-written.
        assert "permission denied" in verdicts[theirs] and "redirect standard output" in verdicts[theirs]
        for path in paths:
            probe = path + ".probe"  # the shell's `>` would empty the file: ask it about a twin
            if os.path.exists(path):
                shutil.copy2(path, probe)
                os.chown(probe, nobody, nobody)
            shell = (
                subprocess.run(
                    ["sh", "-c", ': > "$1"', "sh", probe if os.path.exists(path) else path],
                    capture_output=True,
                    user=nobody,
                    group=nobody,
                    extra_groups=[],
                ).returncode
                == 0
            )
            assert (verdicts[path] == "ok") == shell, (path, verdicts[path], shell)
            if not shell:
                assert "permission denied" in verdicts[path] and f"({path})" in verdicts[path]
        assert verdicts[paths[0]] == "ok" and verdicts[paths[1]] != "ok"  # the shell's verdicts, as expected
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- 4. paths that name no file ---------------------------------------------------------------------


def test_an_empty_path_is_refused_by_name():
    e = refusal("", "empty")
    assert e.where == '""'


def test_a_folder_is_refused(tmp_path):
    refusal(tmp_path, "names a folder", str(tmp_path))
    refusal(f"{tmp_path}/", "names a folder")
    refusal(f"{tmp_path}/new/", "names a folder")  # a trailing slash even when nothing is there
    refusal(f"{tmp_path}/.", "names a folder")
    assert os.listdir(tmp_path) == []


def test_a_missing_folder_is_refused(tmp_path):
    e = refusal(tmp_path / "nope" / "out.csv", "does not exist", str(tmp_path / "nope"))
    assert e.where == str(tmp_path / "nope" / "out.csv")


def test_a_file_used_as_a_folder_is_refused(tmp_path):
    (tmp_path / "file.csv").write_text("x")
    refusal(tmp_path / "file.csv" / "out.csv", "not a folder")


@pytest.mark.parametrize(
    "path, fragment",
    [
        ("", "empty"),
        ("{tmp}/", "names a folder"),
        ("{tmp}", "names a folder"),
        ("{tmp}/nope/out.csv", "does not exist"),
    ],
)
def test_cli_refusals_exit_1_and_name_the_path(nncli, tmp_path, path, fragment):
    path = path.format(tmp=tmp_path)
    result = nncli("onehot", "-", "-o", path, input="0\n1\n")
    assert_error(result, 1, fragment, f"({path})" if path else '("")')
    assert os.listdir(tmp_path) == []
    assert not os.path.exists(os.path.join(os.path.dirname(os.getcwd()), ".nncli.tmp"))


# -- 5. the up-front checks -------------------------------------------------------------------------


def test_an_input_is_refused_without_force_and_allowed_with_it(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a\n1\n")
    (tmp_path / "link.csv").symlink_to("data.csv")
    os.link(data, tmp_path / "hard.csv")
    for path in (data, tmp_path / "link.csv", tmp_path / "hard.csv", f"{tmp_path}/./data.csv"):
        e = refusal(
            path,
            "--save-weights",
            "one of this command's inputs",
            "--force",
            inputs=[None, str(data)],
            option="--save-weights",
        )
        assert e.where == str(path)
        check_output(str(path), [str(data)], True, "--save-weights")
    check_output(str(tmp_path / "other.csv"), [str(data), None, "-"], False)


def test_standard_output_always_passes():
    check_output(None, ["-"], False)
    check_output("-", ["-"], False)


def test_two_outputs_naming_one_file_are_refused(tmp_path):
    w = tmp_path / "w.safetensors"
    with pytest.raises(NncliError) as caught:
        check_distinct_outputs({"--save-weights": str(w), "-o": str(w)})
    assert "--save-weights and -o name the same file" in caught.value.message and caught.value.where == str(w)
    w.write_bytes(b"x")
    (tmp_path / "link").symlink_to("w.safetensors")
    for a, b in [(w, tmp_path / "link"), (w, f"{tmp_path}/./w.safetensors"), (tmp_path / "link", w)]:
        with pytest.raises(NncliError, match="name the same file"):
            check_distinct_outputs({"--save-weights": str(a), "-o": str(b)})


def test_distinct_outputs_pass(tmp_path):
    check_distinct_outputs({"--save-weights": str(tmp_path / "w.pt"), "-o": str(tmp_path / "report.json")})
    check_distinct_outputs({"--save-weights": str(tmp_path / "w.pt"), "-o": None})
    check_distinct_outputs({"--save-weights": str(tmp_path / "w.pt"), "-o": "-"})
    check_distinct_outputs({"--save-weights": "/dev/null", "-o": "/dev/null"})  # both go through: nothing lost


# The wiring in the commands (views.target.check_outputs): each check runs before any work.


@pytest.fixture
def no_work(monkeypatch):
    """Any command that reaches its data has started work: fail loudly if it does."""
    from nncli.lib import session as api

    def started(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(api, "open_data", started)


def test_forward_refuses_a_bad_output_before_any_work(nncli, tmp_path, no_work):
    out = tmp_path / "nope" / "out.csv"
    assert_error(
        nncli("forward", CONFIGS / "hand-checkable.yaml", DATA / "two-points.csv", "-o", out),
        1,
        "does not exist",
        str(out),
    )


def test_train_refuses_a_dangling_save_weights_before_any_work(nncli, tmp_path, no_work):
    link = tmp_path / "w.safetensors"
    link.symlink_to("missing/w.safetensors")
    result = nncli(
        "train",
        CONFIGS / "net-16-8-4-2.yaml",
        DATA / "row-16.csv",
        "-t",
        "label",
        "--epochs",
        "1",
        "--lr",
        "0.1",
        "--save-weights",
        link,
    )
    assert_error(result, 1, "dangling symbolic link", str(link))


def test_step_refuses_one_file_for_two_outputs_before_any_work(nncli, tmp_path, no_work):
    w = tmp_path / "w.safetensors"
    result = nncli(
        "step",
        CONFIGS / "net-16-8-4-2.yaml",
        DATA / "row-16.csv",
        "-t",
        "label",
        "--lr",
        "0.1",
        "--save-weights",
        w,
        "-o",
        w,
    )
    assert_error(result, 1, "name the same file", str(w))
    assert not w.exists()


def test_an_input_refusal_exits_1_like_every_file_refusal(nncli, tmp_path):
    w = tmp_path / "w.pt"
    import torch

    torch.save({}, w)
    result = nncli(
        "step",
        CONFIGS / "net-16-8-4-2.yaml",
        DATA / "row-16.csv",
        "-t",
        "label",
        "--lr",
        "0.1",
        "--weights",
        w,
        "--save-weights",
        w,
    )
    assert_error(result, 1, "--force", str(w))


def test_init_writes_through_a_device(nncli, tmp_path):
    dev = tmp_path / "w.safetensors"
    make_char_device(dev)
    result = nncli("init", CONFIGS / "net-16-8-2.yaml", "-o", dev)
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


# -- 6. temporary files: named for their writer, stale ones swept -----------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the id names no process now
    return proc.pid


def test_a_temporary_file_names_its_writer(tmp_path):
    with output_file(str(tmp_path / "out.csv")) as f:
        f.write(b"x")
        (name,) = temps(tmp_path)
        m = output._TEMP_NAME.fullmatch(name)
        assert m and m["name"] == "out.csv" and int(m["pid"]) == os.getpid()
        assert stale_temp_files(str(tmp_path)) == []  # its writer is alive: not stale


def test_a_long_name_still_gets_a_temporary_file(tmp_path):
    name = "é" * 127  # 254 bytes: the longest name a file system takes
    write(tmp_path / name, b"x")
    assert (tmp_path / name).read_bytes() == b"x" and temps(tmp_path) == []


def test_stale_temporary_files_are_found_and_removed(tmp_path):
    dead = _dead_pid()
    try:
        os.kill(dead, 0)
        pytest.skip("the dead child's id was already reused")
    except ProcessLookupError:
        pass
    stale = [tmp_path / f".out.csv.nncli-{dead}-0123abcd.tmp", tmp_path / f".w.safetensors.nncli-{dead}-ffff0000.tmp"]
    live = [tmp_path / f".out.csv.nncli-{os.getpid()}-0123abcd.tmp", tmp_path / ".out.csv.nncli-1-0123abcd.tmp"]
    others = [tmp_path / "out.csv", tmp_path / ".out.csv.k2j4h5l6.tmp", tmp_path / f"out.csv.nncli-{dead}-0123abcd.tmp"]
    for p in stale + live + others:
        p.write_bytes(b"x")
    (tmp_path / f".d.nncli-{dead}-00000000.tmp").mkdir()  # a folder with the name: not ours
    assert stale_temp_files(str(tmp_path)) == sorted(str(p) for p in stale)
    assert remove_stale_temp_files(str(tmp_path)) == sorted(str(p) for p in stale)
    assert all(not p.exists() for p in stale) and all(p.exists() for p in live + others)
    assert stale_temp_files(str(tmp_path)) == [] and remove_stale_temp_files(str(tmp_path)) == []


def test_only_names_nncli_writes_are_swept(tmp_path):
    """It swept any name like nncli's: a PID above pid_max (no process ever had it), Unicode digits
    (int() reads them), any hex length. Now exactly what temp_name writes: ASCII digits, no leading
    zero, below /proc/sys/kernel/pid_max, and 8 lower-case hex digits."""
    dead = _dead_pid()
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    ours = tmp_path / f".o.csv.nncli-{dead}-0123abcd.tmp"
    not_ours = [
        f".o.nncli-{2**70}-0123abcd.tmp",
        f".o.nncli-{pid_max}-0123abcd.tmp",
        ".o.nncli-٣٤٥-0123abcd.tmp",
        f".o.nncli-{dead}-00.tmp",
        f".o.nncli-{dead}-0123abcd0.tmp",
        f".o.nncli-{dead}-0123ABCD.tmp",
        f".o.nncli-0{dead}-0123abcd.tmp",
        f".o.nncli-{dead}-0123abcd.tmp.tmp",
        f".o.nncli-{dead}-٠١٢٣abcd.tmp",
    ]
    for name in [ours.name, *not_ours]:
        (tmp_path / name).write_bytes(b"x")
    if _pid_reused(dead):
        pytest.skip("the dead child's id was already reused")
    assert len(output.temp_name("x").rsplit("-", 1)[1]) == len("0123abcd.tmp")  # the length the pattern asks for
    assert remove_stale_temp_files(str(tmp_path)) == [str(ours)]
    assert sorted(os.listdir(tmp_path)) == sorted(not_ours)


def _pid_reused(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="making another user's file takes root")
def test_another_users_file_is_never_swept(tmp_path):
    """In a shared sticky folder (/tmp), a name like nncli's is no proof that nncli wrote it: clean
    removed another user's file (as root), or stopped at EPERM. Only the user's own files go."""
    import pwd

    nobody = pwd.getpwnam("nobody").pw_uid
    dead = _dead_pid()
    theirs, mine = tmp_path / f".t.csv.nncli-{dead}-0123abcd.tmp", tmp_path / f".m.csv.nncli-{dead}-0123abcd.tmp"
    theirs.write_bytes(b"theirs")
    mine.write_bytes(b"mine")
    os.chown(theirs, nobody, nobody)
    if _pid_reused(dead):
        pytest.skip("the dead child's id was already reused")
    result = subprocess.run([*NNCLI, "clean", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"removed {mine}\n"
    assert theirs.read_bytes() == b"theirs" and not mine.exists()


def test_clean_escapes_the_names_it_prints(tmp_path):
    """A name holding a newline forged a second `removed` line; an escape sequence reached the terminal."""
    dead = _dead_pid()
    forged = "x\nremoved thesis.tex\n.x"  # (a name holds no slash)
    names = [
        f".{forged}.nncli-{dead}-0123abcd.tmp",
        f".b\x1b]0;PWNED\x07.nncli-{dead}-0123abcd.tmp",
        f".c\\n.nncli-{dead}-0123abcd.tmp",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / os.fsdecode(b".d\xff.nncli-%d-0123abcd.tmp" % dead)).write_bytes(b"x")  # not UTF-8
    if _pid_reused(dead):
        pytest.skip("the dead child's id was already reused")
    for flag, verb in (["-n"], "would remove"), ([], "removed"):
        result = subprocess.run([*NNCLI, "clean", *flag, str(tmp_path)], capture_output=True)
        assert result.returncode == 0, result.stderr
        lines = result.stderr.decode("utf-8").splitlines()
        assert lines == [
            f"{verb} {tmp_path}/" + n
            for n in (
                f".b\\x1b]0;PWNED\\x07.nncli-{dead}-0123abcd.tmp",
                f".c\\\\n.nncli-{dead}-0123abcd.tmp",
                f".d\\xff.nncli-{dead}-0123abcd.tmp",
                f".x\\x0aremoved thesis.tex\\x0a.x.nncli-{dead}-0123abcd.tmp",
            )
        ], lines
    assert os.listdir(tmp_path) == []


def test_a_missing_folder_is_one_error():
    with pytest.raises(NncliError, match="cannot list"):
        stale_temp_files("/no/such/folder")


def _start_streaming(out):
    proc = subprocess.Popen(
        [*NNCLI, "forward", str(CONFIGS / "hand-checkable.yaml"), "-", "-o", str(out), "-b", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdin.write(b"a,b\n" + b"1,2\n" * 50_000)
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not temps(out.parent):
        assert time.monotonic() < deadline and proc.poll() is None, "no temporary file appeared"
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_a_killed_writer_leaves_a_temporary_file_a_later_run_can_sweep(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    proc = _start_streaming(out)
    proc.kill()  # SIGKILL: no handler runs, the temporary file stays
    proc.communicate(timeout=30)
    (left,) = temps(tmp_path)
    assert output._TEMP_NAME.fullmatch(left)["pid"] == str(proc.pid)
    assert stale_temp_files(str(tmp_path)) == [str(tmp_path / left)]
    assert remove_stale_temp_files(str(tmp_path)) == [str(tmp_path / left)]
    assert os.listdir(tmp_path) == ["out.csv"] and out.read_text() == "precious\n"


# -- 7. signals -------------------------------------------------------------------------------------


def test_abandon_writes_removes_the_unfinished_temporary_file(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    with pytest.raises(KeyboardInterrupt):
        with output_file(str(out)) as f:
            f.write(b"half")
            assert len(temps(tmp_path)) == 1
            abandon_writes()  # what cli.py's signal handler calls
            assert temps(tmp_path) == []
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["out.csv"] and out.read_text() == "precious\n"
    assert output._unfinished == set()


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_removes_the_spooled_standard_input(tmp_path, sig, code):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    proc = subprocess.Popen(
        [*NNCLI, "step", str(CONFIGS / "net-16-8-4-2.yaml"), "-", "-t", "label", "--lr", "0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(spool_dir)},
    )
    proc.stdin.write((DATA / "row-16.csv").read_bytes())  # and keep standard input open: still spooling
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not os.listdir(spool_dir):
        assert time.monotonic() < deadline and proc.poll() is None, (
            proc.stderr.read() if proc.poll() is not None else "no spool"
        )
        time.sleep(0.05)
    time.sleep(0.2)  # let it register the spool and block reading
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert os.listdir(spool_dir) == []


def test_a_scratch_file_is_private_registered_and_removed(tmp_path):
    from nncli.io.output import scratch_file

    with scratch_file(str(tmp_path)) as (f, path):
        f.write(b"a\n1\n")
        f.flush()
        assert os.path.dirname(path) == str(tmp_path) and open(path, "rb").read() == b"a\n1\n"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert path in output._unfinished  # a signal handler's abandon_writes removes it
        assert output._TEMP_NAME.fullmatch(os.path.basename(path))["pid"] == str(os.getpid())
    assert os.listdir(tmp_path) == [] and path not in output._unfinished
    with pytest.raises(RuntimeError):
        with scratch_file(str(tmp_path)):
            raise RuntimeError
    assert os.listdir(tmp_path) == []


# -- 8. what held up still holds --------------------------------------------------------------------


def test_concurrent_writers_leave_one_whole_file_and_no_temporary(tmp_path):
    out = tmp_path / "out.bin"
    bodies = [bytes([i]) * (1 << 20) for i in range(8)]
    barrier = threading.Barrier(len(bodies))
    errors: list = []

    def writer(body):
        try:
            with output_file(str(out)) as f:
                barrier.wait(timeout=20)
                for k in range(0, len(body), 4096):
                    f.write(body[k : k + 4096])
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and out.read_bytes() in bodies
    assert os.listdir(tmp_path) == ["out.bin"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    with pytest.raises(OSError, match="No space"):
        with output_file(str(out)) as f:
            f.write(b"half")
            raise OSError(28, "No space left on device")
    assert os.listdir(tmp_path) == ["out.csv"] and out.read_text() == "precious\n"


# -- -o FOLDER/ that a failed run made ----------------------------------------------------------------


def test_a_failed_run_removes_the_folders_it_made_for_its_outputs(tmp_path, nncli):
    """`-o new/a/` on a run that then failed left new/ and new/a/ behind, empty."""
    bad = tmp_path / "bad.csv"
    bad.write_text("x0,x1,x2,x3,x4,x5,label\n1,2,3,4,5,x,1\n")
    spec = CONFIGS / "binary-classifier.yaml"
    assert_error(nncli("forward", spec, bad, "-t", "label", "-o", f"{tmp_path}/new/a/"), 1, "is not a number")
    assert sorted(os.listdir(tmp_path)) == ["bad.csv"]
    # a folder the user made stays, even empty; only the one nncli made inside it goes
    (tmp_path / "mine").mkdir()
    assert_error(
        nncli("forward", spec, bad, "-t", "label", "-o", f"{tmp_path}/mine/../mine/made/"), 1, "is not a number"
    )
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "mine"] and os.listdir(tmp_path / "mine") == []
    # a run that works keeps the folders it made, with its output
    result = nncli("forward", spec, DATA / "table-5x6.csv", "-t", "label", "-o", f"{tmp_path}/new/a/")
    assert result.exit_code == 0, result.stderr
    assert os.listdir(tmp_path / "new" / "a") == ["table-5x6.csv"]


def _many(tmp_path):
    """many/a.csv good, many/b.csv failing on its last row: a.csv's output is finished before b fails."""
    many = tmp_path / "many"
    many.mkdir()
    good = (DATA / "table-5x6.csv").read_text()
    (many / "a.csv").write_text(good)
    (many / "b.csv").write_text("".join(good.splitlines(keepends=True)[:5]) + "1,2,x,4,5,6,7\n")
    return many


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("folder", ["new2/", "new6/x/y/"])
def test_a_failed_run_over_several_inputs_leaves_none_of_its_outputs(tmp_path, nncli, fmt, folder):
    """-o FOLDER/ over a.csv then a failing b.csv: a.csv's finished output was kept (and the folders
    with it). The outputs commit together: none appears, no folder stays, no temporary file."""
    many = _many(tmp_path)
    assert_error(
        nncli(
            "forward",
            CONFIGS / "three-class.yaml",
            f"{many}/*.csv",
            "-t",
            "label",
            "-o",
            f"{tmp_path}/{folder}",
            "-f",
            fmt,
        ),
        1,
        "is not a number",
        "b.csv",
    )
    assert sorted(os.listdir(tmp_path)) == ["many"]


def test_a_failed_run_over_several_inputs_keeps_the_users_files(tmp_path, nncli):
    many = _many(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.csv").write_text("precious\n")
    assert_error(
        nncli("forward", CONFIGS / "three-class.yaml", f"{many}/*.csv", "-t", "label", "-o", f"{tmp_path}/out/"),
        1,
        "b.csv",
    )
    assert os.listdir(tmp_path / "out") == ["a.csv"] and (tmp_path / "out" / "a.csv").read_text() == "precious\n"
    # once b.csv is fixed, both are written
    (many / "b.csv").write_text((DATA / "table-5x6.csv").read_text())
    result = nncli("forward", CONFIGS / "three-class.yaml", f"{many}/*.csv", "-t", "label", "-o", f"{tmp_path}/out/")
    assert result.exit_code == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["a.csv", "b.csv"]
    assert (tmp_path / "out" / "a.csv").read_text() == (tmp_path / "out" / "b.csv").read_text() != "precious\n"


@pytest.mark.slow
def test_a_signal_during_a_run_over_several_inputs_leaves_none_of_its_outputs(tmp_path):
    """a.csv written in full (its temporary file waits), then b.csv a FIFO nobody writes: SIGTERM
    removes a.csv's temporary file and the folders the run made."""
    many = tmp_path / "many"
    many.mkdir()
    (many / "a.csv").write_text((DATA / "table-5x6.csv").read_text())
    os.mkfifo(many / "b.csv")
    out = tmp_path / "new" / "x"
    proc = subprocess.Popen(
        [
            *NNCLI,
            "forward",
            str(CONFIGS / "three-class.yaml"),
            str(many / "a.csv"),
            str(many / "b.csv"),
            "-t",
            "label",
            "-o",
            f"{out}/",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out.is_dir() and any(n.startswith(".a.csv.") or n == "a.csv" for n in os.listdir(out))):
            assert time.monotonic() < deadline and proc.poll() is None, (
                proc.stderr.read() if proc.poll() is not None else "timeout"
            )
            time.sleep(0.05)
        time.sleep(1.5)  # five rows: a.csv is finished long before, and the run waits on the FIFO
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert sorted(os.listdir(tmp_path)) == ["many"]


def test_created_folders_removes_only_its_own_empty_folders(tmp_path):
    from nncli.io.output import created_folders

    with pytest.raises(RuntimeError):
        with created_folders(str(tmp_path / "a" / "b" / "c")):
            (tmp_path / "a" / "b" / "kept.txt").write_text("something another process wrote")
            raise RuntimeError("the run fails")
    assert os.listdir(tmp_path / "a") == ["b"] and os.listdir(tmp_path / "a" / "b") == ["kept.txt"]
    # a terminating signal (the CLI's handler calls abandon_writes) removes them too
    with created_folders(str(tmp_path / "x" / "y")):
        output.abandon_writes()
        assert not (tmp_path / "x").exists()
    with pytest.raises(NncliError, match="exists and is not a folder"):
        with created_folders(str(tmp_path / "a" / "b" / "kept.txt")):
            pass
