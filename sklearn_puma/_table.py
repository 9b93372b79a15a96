"""The command line's CSV reader: a table from a file, read within bounds.

Every check that can be made before the rows are read is made first (``open_table``,
with the standard library only: the command line runs it before importing pandas,
scikit-learn or torch), on the file's metadata and its header, so that a hostile or
mistaken input fails at once with one line:
a FIFO or device (reading it could block forever), more bytes than allowed (after
decompression: a gzip bomb is counted, never held), a header with too many columns or
the same name twice (pandas would silently rename the second ``a`` to ``a.1``, and a
second copy of the target would leak it into the features).
"""

import bz2
import codecs
import csv
import gzip
import io
import lzma
import os
import stat
import warnings
import zlib
from collections import Counter

from ._cli import CLIError, short_list

# The header may hold this many bytes per allowed column (names are short; this bound
# lets a header be refused before a million names are parsed).
HEADER_BYTES_PER_COLUMN = 256
HEADER_BYTES_MIN = 64 * 1024
_CHUNK = 1 << 20

# Compressed inputs are recognised by their first bytes (not their name: pandas would
# infer gzip from ".gz" alone, and read a gzip file named ".csv" as text).
_DECOMPRESSORS = (
    (b"\x1f\x8b", "gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"\xfd7zXZ\x00", "xz", lzma.LZMAFile),
)
_REFUSED = ((b"PK\x03\x04", "zip"), (b"\x28\xb5\x2f\xfd", "zstd"))
_DECOMPRESSION_ERRORS = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


def _is_bzip2(head):
    # "BZh" + block size digit + the block magic pi: a CSV could start with "BZh".
    return head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY"


class _TooLarge(CLIError):
    pass


class _Bounded(io.RawIOBase):
    """A binary stream that raises once more than ``limit`` bytes have been read."""

    def __init__(self, raw, limit, what, file):
        self._raw, self._limit, self._what, self._file = raw, limit, what, file
        self.count = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        n = self._raw.readinto(buffer)
        self.count += n or 0
        if self.count > self._limit:
            raise _TooLarge(f"{self._what} is larger than --max-bytes "
                            f"{_fmt_bytes(self._limit)}")
        return n

    def close(self):
        # A decompressor does not close the file it reads from.
        self._raw.close()
        self._file.close()
        super().close()


def _fmt_bytes(n):
    """As --max-bytes takes it (2G, 500M) when exact, else to a tenth of a unit."""
    for unit, size in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= size:
            return f"{n // size}{unit}" if n % size == 0 else f"{n / size:.1f}{unit}"
    return f"{n} bytes"


def _open_regular(path):
    """The file opened for binary reading: a regular file, checked before opening."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CLIError(f"no such file: {path}") from None
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise CLIError(f"{path} is a directory, not a CSV file")
    if not stat.S_ISREG(info.st_mode):
        raise CLIError(f"{path} is not a regular file (a pipe, device or socket); save "
                       "the table to a file first")
    # O_NONBLOCK: should the path have been swapped for a FIFO since the stat, opening
    # it returns at once instead of waiting for a writer, and fstat refuses it.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CLIError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb"), info.st_size


class _Source:
    """Opens the (decompressed, bounded) byte stream of the table, as often as needed."""

    def __init__(self, path, max_bytes):
        self.path, self.max_bytes = path, max_bytes
        raw, size = _open_regular(path)
        with raw:
            head = raw.read(16)
        self.compression, self._decompressor = None, None
        for magic, name in _REFUSED:
            if head.startswith(magic):
                raise CLIError(f"{path} is {name}-compressed; only gzip, bzip2 and xz "
                               "compressed CSV files are read: decompress it first")
        for magic, name, opener in _DECOMPRESSORS:
            if head.startswith(magic):
                self.compression, self._decompressor = name, opener
        if _is_bzip2(head):
            self.compression, self._decompressor = "bzip2", bz2.BZ2File
        if self.compression is None and size > max_bytes:
            raise CLIError(f"{path} is larger than --max-bytes {_fmt_bytes(max_bytes)} "
                           f"({size} bytes)")

    def open(self):
        raw, _ = _open_regular(self.path)
        stream = self._decompressor(raw) if self._decompressor else raw
        what = (f"{self.path} (decompressed)" if self.compression else str(self.path))
        return io.BufferedReader(_Bounded(stream, self.max_bytes, what, raw), _CHUNK)

    def check_size(self):
        """Compressed input: count its decompressed bytes, holding none of them."""
        if self.compression is None:
            return
        with self.open() as stream:
            while stream.read(_CHUNK):
                pass


def _read_header(source, max_columns):
    limit = max(HEADER_BYTES_MIN, HEADER_BYTES_PER_COLUMN * max_columns)
    with source.open() as stream:
        chunk = stream.read(limit + 1)
    truncated = len(chunk) > limit
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        text = decoder.decode(chunk[:limit], final=not truncated)
    except UnicodeDecodeError as exc:
        raise CLIError(f"cannot read {source.path} as CSV: it is not UTF-8 text "
                       f"({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise CLIError(f"{source.path} is empty")
    lines = io.StringIO(text, newline="")
    header = next(csv.reader(lines))
    if truncated and lines.tell() >= len(text):
        raise CLIError(
            f"the header of {source.path} is longer than {_fmt_bytes(limit)}: more "
            f"columns than --max-columns {max_columns} allows, or names far too long"
        )
    return header


def check_header(header, path, target, max_columns):
    """Refuse too many columns, duplicate names, a missing or repeated target."""
    if len(header) > max_columns:
        raise CLIError(f"{path} has {len(header)} columns, more than --max-columns "
                       f"{max_columns}")
    # Empty names are not duplicates: pandas names them "Unnamed: <position>".
    counts = Counter(name for name in header if name != "")
    if counts.get(target, 0) > 1:
        raise CLIError(
            f"the target column {target!r} appears {counts[target]} times in the header of "
            f"{path}: the other copies would leak the target into the features; keep one"
        )
    repeated = [name for name, count in counts.items() if count > 1]
    if repeated:
        raise CLIError(f"duplicate column names in {path}: {short_list(repeated)}; every "
                       "column needs its own name")
    if target not in counts:
        # A file separated by ';' or tabs reads as one comma-separated column.
        other = [sep for sep in (";", "\t", "|") if len(header) == 1
                 and target in header[0].split(sep)]
        if other:
            raise CLIError(
                f"target column {target!r} not found in {path}: its header is one "
                f"column holding {other[0]!r}, so the table looks {other[0]!r}-separated; "
                "this command reads comma-separated files (pandas.read_csv(path, "
                f"sep={other[0]!r}).to_csv('table.csv', index=False) converts it)")
        raise CLIError(f"target column {target!r} not found in {path}; available "
                       f"columns: {short_list(header, limit=8)}")


def open_table(path, target, *, max_columns, max_bytes):
    """The table's source, once its file, size and header have passed every check."""
    try:
        source = _Source(path, max_bytes)
        source.header = _read_header(source, max_columns)
        check_header(source.header, path, target, max_columns)
        source.check_size()
    except CLIError:
        raise
    except _DECOMPRESSION_ERRORS as exc:
        raise CLIError(f"cannot decompress {path}: {exc}") from None
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc}") from None
    return source


def read_table(source, *, max_rows):
    """The CSV table as a DataFrame with a 0-based RangeIndex (row positions)."""
    import pandas as pd

    path, header = source.path, source.header
    try:
        with source.open() as stream, warnings.catch_warnings():
            # A row longer than the header: pandas drops its extra fields with a warning.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(stream, nrows=max_rows + 1, low_memory=False,
                                encoding="utf-8-sig", compression=None, index_col=False)
    except CLIError:
        raise
    except pd.errors.EmptyDataError:
        raise CLIError(f"{path} is empty") from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"cannot read {path} as CSV: it is not UTF-8 text "
                       f"({exc.reason})") from None
    except _DECOMPRESSION_ERRORS as exc:
        raise CLIError(f"cannot decompress {path}: {exc}") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError, OSError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise CLIError(f"cannot read {path} as CSV: {message}") from None
    except MemoryError:
        raise CLIError(f"not enough memory to read {path}; lower --max-bytes or "
                       "--max-rows, or use a smaller table") from None
    if len(frame) > max_rows:
        raise CLIError(f"{path} has more than --max-rows {max_rows} data rows")
    if len(frame) == 0:
        raise CLIError(f"{path} has a header but no data rows")
    if list(frame.columns) != [name or col for name, col in zip(header, frame.columns)]:
        raise CLIError(f"cannot read {path} as CSV: its columns were read as "
                       f"{short_list(frame.columns)}, not as its header names them")
    return frame.reset_index(drop=True)
