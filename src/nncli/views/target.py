"""Where a command's result goes, resolved once at the edge: the path (None for standard output),
the format (--format, else the -o file's suffix, else a table on a terminal and CSV elsewhere) and
the compression (the -o file's .gz, .bz2, .xz or .zst). Writing follows io/output.py's rule."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

from nncli.views.render import BINARY_FORMATS, OutputFormat

SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".txt": "table",
}
COMPRESSED = {".gz": "gz", ".bz2": "bz2", ".xz": "xz", ".zst": "zst"}
# forward -o FOLDER/: each output named by its input's stem and the format's suffix
EXTENSIONS = {
    "csv": ".csv",
    "tsv": ".tsv",
    "json": ".json",
    "jsonl": ".jsonl",
    "parquet": ".parquet",
    "arrow": ".arrow",
    "table": ".txt",
}
DATA_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".parquet", ".pq", ".arrow", ".feather", ".ipc", ".ndjson", ".jsonl")


def output_compression(output: str | None) -> str | None:
    """gz, bz2, xz or zst when the -o file's name ends so."""
    if not output or output == "-":
        return None
    return COMPRESSED.get(os.path.splitext(output)[1].lower())


def resolve_format(fmt: str | None, output: str | None) -> OutputFormat:
    """--format, else the -o file's suffix, else a table on a terminal and CSV anywhere else."""
    if fmt:
        if fmt in BINARY_FORMATS and (not output or output == "-") and sys.stdout.isatty():
            from nncli.errors import UsageError

            raise UsageError(f"--format {fmt} is binary: send it to a file (-o x.{fmt}) or a pipe, not a terminal")
        return OutputFormat(fmt)
    if output and output != "-":
        stem, suffix = os.path.splitext(output.lower())
        if suffix in COMPRESSED:
            stem, suffix = os.path.splitext(stem)
        if not suffix:
            return OutputFormat.csv  # no suffix (/dev/stdout, a FIFO, a plain name): CSV, as in a pipe
        if suffix not in SUFFIX_FORMATS:
            from nncli.errors import UsageError

            known = ", ".join(sorted(k for k in SUFFIX_FORMATS))
            raise UsageError(
                f"-o {output}: unknown output format {suffix!r}; use a suffix ({known}, "
                "optionally + .gz, .bz2, .xz, .zst) or --format"
            )
        return OutputFormat(SUFFIX_FORMATS[suffix])
    return OutputFormat.table if sys.stdout.isatty() else OutputFormat.csv


def check_outputs(outputs: dict, inputs: list, force: bool) -> None:
    """Every output path checked before any work: none is an input (without --force), none is named
    twice, each can be written (output.check_output says what that takes)."""
    from nncli.io.output import check_distinct_outputs, check_output

    named = {k: v for k, v in outputs.items() if v and v != "-"}
    check_distinct_outputs(named)
    for option, path in named.items():
        check_output(path, inputs, force, option)


@dataclass(frozen=True)
class OutputTarget:
    """One command's output, resolved once: where, in which format, compressed how, and how shown."""

    path: str | None  # None or "-": standard output
    format: OutputFormat
    compression: str | None
    precision: int | None = None
    quiet: bool = False
    together: object = None  # an output.Together: -o is renamed into place only when the whole run succeeds

    @classmethod
    def resolve(cls, path: str | None, fmt: str | None, precision=None, quiet=False, together=None) -> OutputTarget:
        """Refuses an unknown -o suffix, or a binary format to a terminal (UsageError), now."""
        return cls(path, resolve_format(fmt, path), output_compression(path), precision, quiet, together)

    @contextlib.contextmanager
    def stream(self):
        """Standard output or -o, compressed when -o ends in .gz, .bz2, .xz or .zst."""
        from nncli.io.output import output_stream

        with output_stream(self.path, "-o", self.together) as f:
            if not self.compression:
                yield f
                return
            from nncli.io.compression import compressing

            with compressing(f, self.compression) as packed:
                yield packed


def folder_outputs(paths: list[str], folder: str, fmt: str) -> list[str]:
    """forward -o FOLDER/: one output per input, named by its stem (data/a.csv.gz -> FOLDER/a.csv)."""
    from nncli.io.tables import COMPRESSIONS

    outputs = []
    for path in paths:
        stem = os.path.basename(path)
        for _ in range(2):
            base, suffix = os.path.splitext(stem)
            if suffix.lower() in COMPRESSIONS or suffix.lower() in DATA_SUFFIXES:
                stem = base
        outputs.append(os.path.join(folder, stem + EXTENSIONS[fmt]))
    return outputs
