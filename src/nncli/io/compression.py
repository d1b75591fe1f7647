"""Compressed streams: .gz, .bz2, .xz and .zst, read as they go (and written, for -o FILE.csv.gz).

Its own module so that the CSV reader and the table reader both use it without importing each other.
"""

from __future__ import annotations

from nncli.errors import NncliError, UsageError


def compressing(stream, compression: str):
    """A binary stream that compresses into `stream` (closing it finishes the compressed data, not `stream`)."""
    if compression == "gz":
        import gzip

        return gzip.GzipFile(fileobj=stream, mode="wb", mtime=0)  # mtime 0: the same output, the same bytes
    if compression == "bz2":
        import bz2

        return bz2.BZ2File(stream, "wb")
    if compression == "xz":
        import lzma

        return lzma.LZMAFile(stream, "wb")
    return _zstd().open(stream, "wb")


def decompressing(stream, compression: str):
    """A binary stream read through a decompressor (standard input of a .gz, say)."""
    if compression == "gz":
        import gzip

        return gzip.GzipFile(fileobj=stream, mode="rb")
    if compression == "bz2":
        import bz2

        return bz2.BZ2File(stream, "rb")
    if compression == "xz":
        import lzma

        return lzma.LZMAFile(stream, "rb")
    return _zstd().open(stream, "rb")


def open_compressed(path: str, compression: str | None):
    """A binary stream of the decompressed content of `path` (read as it goes)."""
    try:
        if compression == "gz":
            import gzip

            return gzip.open(path, "rb")
        if compression == "bz2":
            import bz2

            return bz2.open(path, "rb")
        if compression == "xz":
            import lzma

            return lzma.open(path, "rb")
        if compression == "zst":
            return _zstd().open(path, "rb")
        return open(path, "rb")
    except FileNotFoundError:
        raise NncliError("no such file", path) from None
    except IsADirectoryError:
        raise NncliError("is a directory", path) from None
    except OSError as e:
        raise NncliError(f"cannot read: {e.strerror}", path) from None


def decompress(raw: bytes, compression: str) -> bytes:
    import bz2
    import gzip
    import lzma

    try:
        return {
            "gz": gzip.decompress,
            "bz2": bz2.decompress,
            "xz": lzma.decompress,
            "zst": lambda b: _zstd().decompress(b),
        }[compression](raw)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
        raise NncliError(f"cannot decompress ({compression}): {e}", "<stdin>") from None


def _zstd():
    """Zstandard: the standard library's (Python 3.14+), else the zstandard package."""
    try:
        from compression import zstd  # type: ignore[import-not-found]

        return zstd
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        raise UsageError(".zst files need the zstandard package: pip install 'nncli-torch[zstd]'") from None

    class _Shim:
        @staticmethod
        def open(path, mode="rb"):
            return zstandard.open(path, mode)

        @staticmethod
        def decompress(data: bytes) -> bytes:
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)

    return _Shim
