"""Read the files a user points us at, and parse YAML, without letting them hang or swamp us.

A path in a config can name anything: a FIFO (open() waits for a writer that
never comes), /dev/zero or /dev/urandom (read() never ends), a directory, a
multi-gigabyte log. A YAML document can nest 100,000 levels deep (the
composer recurses) or use aliases to stand for a billion values. Both
happen before anything else runs, so every limit here turns into one
error line instead of a hang, a traceback or gigabytes of memory.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from exporter.secrets import quote_name

KIB = 1024
MIB = 1024 * KIB

# Size caps per kind of file: far above any real file of that kind, far below
# what would hurt. PyYAML's pure-Python loader (needed for the hooks below)
# spends ~35 microseconds and ~700 bytes per value; the byte and value caps
# together keep the worst document at ~10 s and ~170 MB (measured on a 2-core
# dev machine: 18,000 accounts in 3.8 MiB, or 250,000 one-character values).
CONFIG_FILE_MAX = 4 * MIB      # ~20,000 accounts at ~200 bytes each
WEB_CONFIG_MAX = 1 * MIB       # a TLS section and basic-auth users: a few KB in practice
SECRET_FILE_MAX = 16 * KIB     # API keys and secrets are 64 characters; room for any passphrase
PRIVATE_KEY_MAX = 64 * KIB     # PEM private keys: an RSA-16384 key in PKCS#8 is ~13 KB
CERTIFICATE_MAX = 1 * MIB      # certificate chains and CA bundles (Mozilla's full bundle is ~220 KB)

YAML_MAX_DEPTH = 64            # our configs nest 4 levels; exporter-toolkit's 3
YAML_MAX_NODES = 250_000       # values, counting each alias as a copy of its target: an account
                               # has ~11, so ~20,000 accounts, matching the byte cap


KERNEL_TREES = ("/proc", "/sys")


def read_regular_file(path: str | os.PathLike[str], limit: int, what: str = "file",
                      kernel_files: bool = True) -> bytes:
    """Return the bytes of a regular file of at most `limit` bytes.

    Opened non-blocking, so a FIFO without a writer does not wait, then
    checked with fstat on the same descriptor (no race with a rename), so a
    device, FIFO, socket or directory is refused before a single read.
    Problems are raised as OSError with a one-phrase `strerror`, like the
    errors from open() that callers already report.

    kernel_files=False also refuses files of /proc and /sys (by path, after
    symlinks, and by filesystem, for a bind mount elsewhere): they look like
    regular files, and /proc/self/environ would make the whole environment a "secret".
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not kernel_files and _is_kernel_file(path, st):
            raise OSError(errno.EINVAL, "a file of /proc or /sys (kernel data, not a file of yours)")
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_file_kind(st.st_mode)})")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than the {_size(limit)} limit for a {what}")
        chunks: list[bytes] = []
        remaining = limit + 1  # one more byte tells us the file grew past the limit since fstat
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 64 * KIB))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        if remaining <= 0:
            raise OSError(errno.EFBIG, f"larger than the {_size(limit)} limit for a {what}")
        data = b"".join(chunks)
    finally:
        os.close(fd)
    reads: list[FileRead] | None = getattr(_recording, "reads", None)
    if reads is not None:
        reads.append(FileRead(os.fspath(path), limit, what, kernel_files, hashlib.sha256(data).digest()))
    return data


@dataclass(frozen=True)
class FileRead:
    """One file read_regular_file read while recording: how to read it again, and a digest of what it held."""

    path: str
    limit: int
    what: str
    kernel_files: bool
    digest: bytes = field(repr=False)

    def unchanged(self) -> bool:
        """Whether the file reads the same now (False if it cannot be read at all)."""
        try:
            data = read_regular_file(self.path, self.limit, self.what, self.kernel_files)
        except (OSError, ValueError):
            return False
        return hashlib.sha256(data).digest() == self.digest


_recording = threading.local()


@contextmanager
def recording_reads() -> Iterator[list[FileRead]]:
    """Every file this thread reads with read_regular_file meanwhile: what a config was made of.

    A reload whose files all read the same as at the last successful one (and the environment
    is the process's, which does not change) would build the same config: it can skip the work."""
    reads: list[FileRead] = []
    _recording.reads = reads
    try:
        yield reads
    finally:
        _recording.reads = None


def _is_kernel_file(path: str | os.PathLike[str], st: os.stat_result) -> bool:
    real = os.path.realpath(path)
    if any(real == tree or real.startswith(tree + "/") for tree in KERNEL_TREES):
        return True
    for tree in KERNEL_TREES:
        try:
            if os.stat(tree).st_dev == st.st_dev:
                return True
        except OSError:
            continue
    return False


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB and n % MIB == 0 else f"{n // KIB} KiB"


class YamlLimitError(yaml.MarkedYAMLError):
    """The document is valid YAML but too deep or too big for us to build."""


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping repeats a key; the message quotes the key only if it reads like a name."""


class ConversionError(yaml.constructor.ConstructorError):
    """A scalar looked like a number or date but did not convert (a 5,000-digit int, 2024-13-45)."""


def _mark(event: yaml.Event) -> yaml.Mark | None:
    """The event's position. The pure-Python parser's marks are yaml.Mark; the stubs also allow the C parser's."""
    mark = event.start_mark
    return mark if isinstance(mark, yaml.Mark) else None


class _Loader(yaml.SafeLoader):
    """SafeLoader with three additions for files from outside.

    - duplicate mapping keys are errors instead of silently keeping the last;
    - nesting deeper than YAML_MAX_DEPTH is an error (PyYAML's composer
      recurses, so 100,000 levels would end in RecursionError);
    - at most YAML_MAX_NODES values, counting every use of an alias as a full
      copy of what it names: aliases are shared objects in memory, but anything
      that walks the result (a merge key `<<`, repr() in an error message)
      expands them, and ten nested aliases of ten already make a billion.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._anchor_sizes: dict[str, int] = {}

    def _count(self, n: int, mark: yaml.Mark | None) -> None:
        self._nodes += n
        if self._nodes > YAML_MAX_NODES:
            raise YamlLimitError(None, None, f"more than {YAML_MAX_NODES} values (counting each use of an alias "
                                 "as a copy)", mark)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # unannotated in types-PyYAML
        mark = _mark(event)
        if isinstance(event, yaml.AliasEvent):
            size = self._anchor_sizes.get(event.anchor) if event.anchor is not None else None
            if size is None and event.anchor in self.anchors:
                raise YamlLimitError(None, None, "an alias refers to the list or mapping that contains it", mark)
            self._count(size or 0, mark)  # an unknown anchor: PyYAML reports it next
            return super().compose_node(parent, index)
        if self._depth >= YAML_MAX_DEPTH:
            raise YamlLimitError(None, None, f"nested deeper than {YAML_MAX_DEPTH} levels", mark)
        before = self._nodes
        self._count(1, mark)
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._anchor_sizes[anchor] = self._nodes - before
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # Scalars that match a type's pattern can still fail to convert: an
        # int of 5,000 digits (Python's int/str limit), a 2024-13-45 date.
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - any converter failure becomes a positioned YAML error
            kind = str(node.tag).rsplit(":", 1)[-1][:20]
            raise ConversionError(None, None, f"cannot convert this {kind} ({type(exc).__name__})",
                                  node.start_mark) from None


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base`: SafeConstructor merges it; later keys override, as YAML intends
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable: construct_mapping reports it
        if duplicate:
            raise DuplicateKeyError(None, None, f"duplicate key {quote_name(key)}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# The last few documents parsed, by digest of their text: PyYAML's pure-Python parser is ~90 % of
# a reload (1.5 s for 2,000 accounts), and a storm of reloads re-reads the same text (issue 23).
# The text is read and every value checked on each reload all the same; only parsing is skipped.
_PARSED: OrderedDict[bytes, Any] = OrderedDict()
_PARSED_MAX = 4
_PARSED_LOCK = threading.Lock()


def parse_yaml(text: str) -> Any:
    """Parse one YAML document with the limits above; every failure is a yaml.YAMLError.

    Same text, same data: a document parsed before is handed out again as a deep copy."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    with _PARSED_LOCK:
        if digest in _PARSED:
            _PARSED.move_to_end(digest)
            return copy.deepcopy(_PARSED[digest])
    data = _parse_yaml(text)
    with _PARSED_LOCK:
        _PARSED[digest] = copy.deepcopy(data)
        while len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)
    return data


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        raise
    except RecursionError:
        raise YamlLimitError(None, None, "nested too deeply", None) from None
    except Exception as exc:  # noqa: BLE001 - whatever PyYAML throws, the user gets one line
        raise YamlLimitError(None, None, f"cannot parse ({type(exc).__name__})", None) from None


# PyYAML's problem texts quote bits of the input with %r: single characters
# and token names, which help, but also tag and anchor names, which are
# whatever the user typed (a secret pasted after `!` or `*` becomes one).
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_HARMLESS_QUOTE = re.compile(r"['\"](.{0,4}|<[a-z ]+>|tag:yaml\.org,2002:[a-z]+)['\"]")
MAX_PROBLEM_CHARS = 200


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: position and problem, never the offending line itself.

    str(exc) would print the line with a caret under it, and that line may
    hold a secret; quoted fragments other than single characters and token
    names are replaced by '...'.
    """
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    if not isinstance(exc, (YamlLimitError, DuplicateKeyError, ConversionError)):  # ours quote safely already
        problem = _QUOTED.sub(lambda m: m.group() if _HARMLESS_QUOTE.fullmatch(m.group()) else "'...'", problem)
    problem = " ".join(problem.split())[:MAX_PROBLEM_CHARS]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    kind = "YAML error" if isinstance(exc, (YamlLimitError, ConversionError)) else "YAML syntax error"
    return f"{kind}{where}: {problem}"
