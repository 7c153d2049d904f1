"""Every file access under `<loki-dir>/.loki/`: the state directory is untrusted input (SPEC §3.2).

The files there are written by the session's CLI (an agent running arbitrary
code) or come with a cloned repository, so this module is the one door to them:

- **Nothing outside.** A path is walked one component at a time from a
  descriptor of `.loki/` with `O_NOFOLLOW` (`openat`-style, checked at open
  time, not before), so a symlink anywhere inside is never followed, for
  reads, writes or deletes. Writes replace files by `rename` inside the
  directory descriptor, which replaces a planted symlink instead of writing
  through it.
- **Only regular files.** Files are opened `O_NONBLOCK` and checked with
  `fstat`: a FIFO, socket, device or directory is skipped, so no read ever
  blocks the event loop.
- **Bounded.** A document is read up to `max_file` + 1 bytes, never whole; JSON
  deeper than `max_depth` or with more than `max_values` values is rejected
  before it is decoded (no `RecursionError`, no decode of millions of objects).
- **Said once.** A skipped path is logged once while it stays bad, listed
  nowhere, and reported on `/health` (`stateFiles`, `degraded`).
- **Storage failures** (ENOSPC, EIO, EROFS, EDQUOT) on our own writes raise
  `StorageUnavailable` (503 `STORAGE_UNAVAILABLE` at the HTTP edge) and mark
  `/health/ready` failing under `storage` until a write succeeds again.

    StateDirError(OSError)
     ├── StorageUnavailable   the disk refused a write
     └── UnusableEntry        a symlink / non-regular file / non-directory where we need one

Both are `OSError`s, so callers that already treat an `OSError` as "could not
read/write" keep doing so.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

from .health_problems import HealthProblems

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Errors that mean the storage itself refuses writes (disk full, I/O error, read-only, quota).
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT})
# Health keys this module reports under.
STORAGE_KEY = "storage"
SKIPPED_KEY = "stateFiles"
# Skipped paths remembered (for "warn once"); past this, new ones are logged at debug.
MAX_SKIPPED = 10_000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Limits:
    """The caps on what is read from the state directory (SPEC §3.2 defaults)."""

    # Bytes of one state document (`--max-state-file`, `LOKI_MAX_STATE_FILE`).
    max_file: int = 8 * MiB
    # Characters of one string inside a document; longer ones are cut.
    max_string: int = 64 * 1024
    # Tasks (or agents) taken from one document, and events one change may publish.
    max_items: int = 10_000
    # Nesting levels of a JSON document.
    max_depth: int = 64

    @property
    def max_values(self) -> int:
        """JSON values (objects, arrays, scalars) in one document: decoding 8 MiB of
        `{},{},...` would otherwise take ~200 MB of Python objects."""
        return 50 * self.max_items


# A path below the root: relative (`"sessions/x/tasks.json"`, a tuple of parts) or
# absolute inside it.
Where = str | PurePath | tuple[str, ...]


class StateDirError(OSError):
    """A file under `.loki/` could not be used; `path` is relative to `.loki/`."""

    def __init__(self, code: int, reason: str, path: str) -> None:
        super().__init__(code, reason, path)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class StorageUnavailable(StateDirError):
    """A write of the server's own state failed for lack of working storage."""


class UnusableEntry(StateDirError):
    """A symlink, special file or non-directory sits where we need a file or directory."""


# ------------------------------------------------------------------------- JSON shape

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_TO_PARENS = bytes.maketrans(_BRACKETS, b"()()")


def without_strings(raw: bytes) -> bytes:
    """`raw` with each JSON string's content taken out (`"..."` becomes `""`).

    In linear time whatever the input: escapes go first (so no quote inside a
    string is left), then every other piece between quotes is a string's
    content. (A regex matching strings whole backtracks quadratically on many
    unclosed quotes: a planted 600 KB file took minutes.) An unterminated last
    string is dropped with its content; the decoder rejects such a file anyway.
    """
    pieces = _ESCAPE.sub(b"", raw).split(b'"')
    return b'""'.join(pieces[0::2])


def json_shape_problem(raw: bytes, max_depth: int, max_values: int) -> str | None:
    """Why `raw` must not be handed to the JSON decoder, or None when it may be.

    Counts nesting and values on the bytes, strings stripped, with a few C-speed
    passes (no Python loop per byte): deeper than `max_depth`, more than
    `max_values` values, or unbalanced brackets (which would also send the
    decoder into deep recursion) are rejected.
    """
    if len(raw) <= max_values and raw.count(b"[") + raw.count(b"{") <= max_depth:
        return None  # fast path: every small, shallow document
    bare = without_strings(raw) if b'"' in raw else raw
    brackets = bare.translate(None, _NOT_BRACKETS)
    values = bare.count(b",") + 1 + len(brackets) // 2
    if values > max_values:
        return f"more than {max_values} JSON values"
    # Removing every "()" pair takes away one level of nesting.
    parens = brackets.translate(_TO_PARENS)
    for _ in range(max_depth):
        if not parens:
            return None
        inner = parens.replace(b"()", b"")
        if len(inner) == len(parens):
            return "not valid JSON (unbalanced brackets)"
        parens = inner
    return None if not parens else f"JSON nested deeper than {max_depth} levels"


def cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters."""
    return text if len(text) <= limit else text[:limit]


# ------------------------------------------------------------------------- the door


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def rejection_kind(reason: str) -> str:
    """The `reason` label of `loki_state_files_rejected_total` for a skip's message."""
    if reason == "a symbolic link":
        return "symlink"
    if reason in ("a directory", "a FIFO", "a socket", "a device", "not a regular file"):
        return "not_regular"
    if "over the cap" in reason:
        return "too_large"
    if "JSON" in reason:
        return "json_shape"
    return "other"


def write_area(what: str) -> str:
    """The `what` label of `loki_storage_write_errors_total` for a path we failed to write."""
    parts = PurePath(what).parts
    if "snapshots" in parts:
        return "snapshot"
    if "events" in parts:
        return "event_log"
    if "sessions" in parts:
        return "sessions"
    if "output" in parts:
        return "output"
    return "other"


class StateDir:
    """`.loki/` opened safely; paths are relative to it (or absolute paths inside it)."""

    def __init__(
        self, root: Path, limits: Limits | None = None, health: HealthProblems | None = None
    ) -> None:
        self.root = root
        self.limits = limits or Limits()
        self.health = health if health is not None else HealthProblems()
        # Paths skipped while they stay bad, by parent directory: name → reason.
        self._skipped: dict[tuple[str, ...], dict[str, str]] = {}
        self._skipped_count = 0
        # For /metrics (plain counters): paths skipped, once per path and reason, by
        # `rejection_kind`; our writes the storage refused, by `write_area`.
        self.rejected: dict[str, int] = {}
        self.write_errors: dict[str, int] = {}

    # ------------------------------------------------------------------ paths

    def parts(self, path: str | PurePath | tuple[str, ...]) -> tuple[str, ...]:
        """`path` as components below the root. ValueError for anything that is not."""
        pure = PurePath(*path) if isinstance(path, tuple) else PurePath(path)
        if pure.is_absolute():
            pure = pure.relative_to(self.root)
        parts = pure.parts
        for part in parts:
            if part in ("", ".", "..") or "\0" in part or "/" in part:
                raise ValueError(f"not a path inside the state directory: {path}")
        return parts

    def relative(self, path: Where) -> str:
        """`path` relative to the root, for messages."""
        return self._name(self.parts(path))

    def path(self, path: Where) -> Path:
        """The absolute path of `path` (for messages and for programs we start)."""
        return self.root.joinpath(*self.parts(path))

    @staticmethod
    def _name(parts: tuple[str, ...]) -> str:
        return "/".join(parts) or "."

    @contextlib.contextmanager
    def _dir(self, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
        """A descriptor of directory `parts`, walked without following any symlink.

        FileNotFoundError when it does not exist (and not `create`), UnusableEntry when a
        component is a symlink or not a directory.
        """
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            # `.loki` itself is no exception: one swapped for a link while we run (the
            # session's agent can do that) would send everything where it points.
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            what = _describe(os.lstat(self.root).st_mode)
            self._skip((), what)
            raise UnusableEntry(exc.errno, f"{what}, not a directory", str(self.root)) from None
        if "." in self._skipped.get((), ()):
            self._usable((".",))  # a real directory again
        try:
            for index, part in enumerate(parts):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = parts[: index + 1]
                    what = self._what(fd, part)
                    self._skip(where, what)
                    raise UnusableEntry(
                        exc.errno, f"{what}, not a directory", self._name(where)
                    ) from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _what(dir_fd: int, name: str) -> str:
        try:
            return _describe(os.lstat(name, dir_fd=dir_fd).st_mode)
        except OSError:
            return "unusable"

    # ------------------------------------------------------------- skip bookkeeping

    def _skip(self, parts: tuple[str, ...], reason: str) -> None:
        """`parts` is unusable: warn once while it stays so, and say so on /health."""
        parent, name = parts[:-1], parts[-1] if parts else "."
        known = self._skipped.setdefault(parent, {})
        if known.get(name) == reason:
            return
        if name not in known:
            self._skipped_count += 1
        kind = rejection_kind(reason)
        self.rejected[kind] = self.rejected.get(kind, 0) + 1
        if self._skipped_count > MAX_SKIPPED:
            log.debug("skipping %s under %s: %s", self._name(parts), self.root, reason)
        else:
            log.warning("skipping .loki/%s: %s", self._name(parts), reason)
        known[name] = reason
        self._report_skipped(parts, reason)

    def _usable(self, parts: tuple[str, ...]) -> None:
        """`parts` was read fine (or is gone): it is no longer skipped."""
        known = self._skipped.get(parts[:-1])
        if known and known.pop(parts[-1], None) is not None:
            self._skipped_count -= 1
            if not known:
                del self._skipped[parts[:-1]]
            self._report_skipped()

    def _listed(self, parent: tuple[str, ...], names: set[str]) -> None:
        """A listing of `parent` saw exactly `names`: forget skipped entries now gone."""
        known = self._skipped.get(parent)
        if not known:
            return
        gone = [name for name in known if name not in names]
        for name in gone:
            self._usable((*parent, name))

    def _forget_under(self, parts: tuple[str, ...]) -> None:
        """`parts` and everything below it are gone."""
        self._usable(parts)
        for parent in [p for p in self._skipped if p[: len(parts)] == parts]:
            for name in list(self._skipped.get(parent, ())):
                self._usable((*parent, name))

    def _report_skipped(self, latest: tuple[str, ...] | None = None, reason: str = "") -> None:
        if self._skipped_count <= 0:
            self.health.clear(SKIPPED_KEY)
            return
        if latest is None:
            for parent, names in self._skipped.items():
                name, reason = next(iter(names.items()))
                latest = (*parent, name)
                break
        assert latest is not None
        self.health.report(
            SKIPPED_KEY,
            f"{self._skipped_count} path(s) under .loki/ skipped, e.g. "
            f"{self._name(latest)}: {reason}",
        )

    def skipped(self) -> dict[str, str]:
        """Every path skipped now: relative path → reason."""
        return {
            self._name((*parent, name)): reason
            for parent, names in self._skipped.items()
            for name, reason in names.items()
        }

    def reject(self, path: Where, reason: str) -> None:
        """A caller found `path` unusable after reading it (say, not valid for its type)."""
        self._skip(self.parts(path), reason)

    # ------------------------------------------------------------------- reading

    def _open_regular(self, dir_fd: int, parts: tuple[str, ...]) -> int | None:
        """A read descriptor of regular file `parts[-1]` in `dir_fd`, or None (skipped/missing)."""
        try:
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            self._usable(parts)
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._skip(parts, "a symbolic link")
            else:
                log.debug("cannot open .loki/%s: %s", self._name(parts), exc)
            return None
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            os.close(fd)
            return None
        if not stat.S_ISREG(mode):
            os.close(fd)
            self._skip(parts, _describe(mode))
            return None
        # Regular files never block; plain blocking reads from here on.
        os.set_blocking(fd, True)
        return fd

    def open_read(self, path: Where) -> int | None:
        """A descriptor for reading a regular file (the caller closes it), or None."""
        parts = self.parts(path)
        try:
            with self._dir(parts[:-1]) as dir_fd:
                return self._open_regular(dir_fd, parts)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.debug("cannot open .loki/%s: %s", self._name(parts), exc)
            return None

    def _read_capped(self, fd: int, parts: tuple[str, ...], cap: int) -> bytes | None:
        size = os.fstat(fd).st_size
        if size > cap:
            self._skip(parts, f"{size} bytes, over the cap of {cap}")
            return None
        chunks: list[bytes] = []
        got = 0
        while got <= cap:
            chunk = os.read(fd, cap + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > cap:  # it grew while we read
            self._skip(parts, f"over the cap of {cap} bytes")
            return None
        return b"".join(chunks)

    def _read_in(self, dir_fd: int, parts: tuple[str, ...], cap: int, json: bool) -> bytes | None:
        fd = self._open_regular(dir_fd, parts)
        if fd is None:
            return None
        try:
            data = self._read_capped(fd, parts, cap)
        except OSError as exc:
            log.debug("cannot read .loki/%s: %s", self._name(parts), exc)
            return None
        finally:
            os.close(fd)
        if data is None:
            return None
        if json:
            problem = json_shape_problem(data, self.limits.max_depth, self.limits.max_values)
            if problem is not None:
                self._skip(parts, problem)
                return None
        self._usable(parts)
        return data

    def read(self, path: Where, *, cap: int | None = None, json: bool = False) -> bytes | None:
        """The bytes of a regular file, or None when it is missing or skipped.

        At most `cap` bytes (default `max_file`); a bigger file is skipped, never read
        whole. With `json`, a document too deep or too big to decode is skipped too.
        """
        parts = self.parts(path)
        try:
            with self._dir(parts[:-1]) as dir_fd:
                return self._read_in(dir_fd, parts, cap or self.limits.max_file, json)
        except OSError:
            return None

    def read_documents(
        self, directory: Where, names: tuple[str, ...]
    ) -> dict[str, bytes | None] | None:
        """Several JSON documents of one directory (one walk): name → bytes or None.

        None when the directory itself is missing or unusable.
        """
        parts = self.parts(directory)
        try:
            with self._dir(parts) as dir_fd:
                return {
                    name: self._read_in(dir_fd, (*parts, name), self.limits.max_file, True)
                    for name in names
                }
        except OSError:
            return None

    def lstat(self, path: Where) -> os.stat_result | None:
        """`lstat` of `path` (never following a symlink), or None."""
        parts = self.parts(path)
        try:
            with self._dir(parts[:-1]) as dir_fd:
                return os.lstat(parts[-1], dir_fd=dir_fd)
        except OSError:
            return None

    def is_file(self, path: Where) -> bool:
        st = self.lstat(path)
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_dir(self, path: Where) -> bool:
        """True for a real directory (a symlink to one is not)."""
        parts = self.parts(path)
        if not parts:
            try:
                return stat.S_ISDIR(os.lstat(self.root).st_mode)
            except OSError:
                return False
        st = self.lstat(parts)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def exists(self, path: Where) -> bool:
        """True when anything (even a bad entry) is at `path`."""
        return self.lstat(path) is not None

    def list(self, directory: Where, *, dirs: bool = False, suffix: str = "") -> list[str]:
        """Names of the regular files (or, with `dirs`, real directories) in `directory`.

        Symlinks and entries of the wrong type are skipped (warned once) and not listed.
        """
        parts = self.parts(directory)
        names: list[str] = []
        seen: set[str] = set()
        try:
            with self._dir(parts) as dir_fd, os.scandir(dir_fd) as entries:
                for entry in entries:
                    seen.add(entry.name)
                    if suffix and not entry.name.endswith(suffix):
                        continue
                    try:
                        if entry.is_symlink():
                            self._skip((*parts, entry.name), "a symbolic link")
                        elif dirs:
                            if entry.is_dir(follow_symlinks=False):
                                names.append(entry.name)
                        elif entry.is_file(follow_symlinks=False):
                            names.append(entry.name)
                        else:  # a FIFO, socket, device or directory where a file is expected
                            mode = entry.stat(follow_symlinks=False).st_mode
                            self._skip((*parts, entry.name), _describe(mode))
                    except OSError:
                        continue
        except OSError as exc:
            if not isinstance(exc, (FileNotFoundError, UnusableEntry)):
                log.debug("cannot list .loki/%s: %s", self._name(parts), exc)
            return []
        self._listed(parts, seen)
        return sorted(names)

    # ------------------------------------------------------------------- writing

    def _storage_error(self, parts: tuple[str, ...], exc: OSError) -> OSError:
        """The exception a failed write of ours should raise, reporting storage trouble."""
        if isinstance(exc, StateDirError):
            return exc
        name = self._name(parts)
        if exc.errno in STORAGE_ERRNOS:
            self.storage_failed(name, exc)
            return StorageUnavailable(exc.errno or errno.EIO, exc.strerror or str(exc), name)
        if exc.errno in (errno.EISDIR, errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            return UnusableEntry(exc.errno, exc.strerror or str(exc), name)
        return exc

    def storage_failed(self, what: str, exc: OSError) -> None:
        """A write of ours failed: `/health/ready` fails under `storage` until one succeeds."""
        area = write_area(what)
        self.write_errors[area] = self.write_errors.get(area, 0) + 1
        if exc.errno in STORAGE_ERRNOS:
            reason = f"cannot write .loki/{what}: {exc.strerror or exc}"
            self.health.report(STORAGE_KEY, reason, blocks_ready=True)

    def storage_ok(self) -> None:
        """A write of ours succeeded."""
        self.health.clear(STORAGE_KEY)

    def makedirs(self, path: Where) -> None:
        """Create directory `path` and its parents (real directories, no symlink followed)."""
        parts = self.parts(path)
        try:
            with self._dir(parts, create=True):
                pass
        except OSError as exc:
            raise self._storage_error(parts, exc) from exc

    def write_atomic(self, path: Where, data: bytes) -> None:
        """Replace file `path` with `data`: temp file + rename, inside the directory descriptor.

        Readers see the old file or the new one. A symlink at `path` is replaced, not
        written through. Missing parent directories are created.
        """
        parts = self.parts(path)
        try:
            with self._dir(parts[:-1], create=True) as dir_fd:
                tmp = f".{parts[-1]}.{secrets.token_hex(4)}.tmp"
                write_new(dir_fd, tmp, data)
                try:
                    os.replace(tmp, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=dir_fd)
                    raise
        except OSError as exc:
            raise self._storage_error(parts, exc) from exc
        self.storage_ok()

    def open_append(self, path: Where) -> int:
        """A descriptor appending to regular file `path` (created if missing; the caller
        closes it). UnusableEntry when a symlink, FIFO or directory is there."""
        parts = self.parts(path)
        try:
            with self._dir(parts[:-1], create=True) as dir_fd:
                fd = os.open(
                    parts[-1],
                    os.O_WRONLY
                    | os.O_APPEND
                    | os.O_CREAT
                    | os.O_NONBLOCK
                    | os.O_NOFOLLOW
                    | os.O_CLOEXEC,
                    0o644,
                    dir_fd=dir_fd,
                )
                mode = os.fstat(fd).st_mode
                if not stat.S_ISREG(mode):
                    os.close(fd)
                    self._skip(parts, _describe(mode))
                    raise UnusableEntry(
                        errno.EINVAL, f"{_describe(mode)}, not a regular file", self._name(parts)
                    )
                os.set_blocking(fd, True)
                return fd
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._skip(parts, "a symbolic link")
            raise self._storage_error(parts, exc) from exc

    def open_fifo(self, path: Where) -> int | None:
        """A non-blocking write descriptor of FIFO `path` that someone reads, else None."""
        parts = self.parts(path)
        try:
            with self._dir(parts[:-1]) as dir_fd:
                fd = os.open(
                    parts[-1],
                    os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=dir_fd,
                )
        except OSError:  # ENOENT: no fifo; ENXIO: nobody reads it; ELOOP: a symlink
            return None
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def rename(self, source: Where, target: Where) -> None:
        """Rename `source` to `target` within one directory (no symlink followed)."""
        src, dst = self.parts(source), self.parts(target)
        if src[:-1] != dst[:-1]:
            raise ValueError("rename only within one directory")
        try:
            with self._dir(src[:-1]) as dir_fd:
                os.replace(src[-1], dst[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            raise self._storage_error(dst, exc) from exc

    def remove(self, path: Where) -> bool:
        """Unlink file (or symlink) `path` itself; False when it was not there.

        UnusableEntry when a directory is there.
        """
        parts = self.parts(path)
        try:
            with self._dir(parts[:-1]) as dir_fd:
                os.unlink(parts[-1], dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                self._skip(parts, "a directory")
            raise self._storage_error(parts, exc) from exc
        self._usable(parts)
        return True

    def remove_tree(self, path: Where) -> None:
        """Delete directory `path` and everything in it; a symlink inside (or at `path`)
        is unlinked, never followed. Missing is fine."""
        parts = self.parts(path)
        if not parts:
            raise ValueError("refusing to remove the state directory itself")
        try:
            with self._dir(parts[:-1]) as dir_fd:
                st = os.lstat(parts[-1], dir_fd=dir_fd)
                if stat.S_ISDIR(st.st_mode):
                    # rmtree with dir_fd works on descriptors (os.open/unlink with dir_fd):
                    # it does not follow symlinks inside (`rmtree.avoids_symlink_attacks`).
                    shutil.rmtree(parts[-1], dir_fd=dir_fd)
                else:
                    os.unlink(parts[-1], dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._storage_error(parts, exc) from exc
        self._forget_under(parts)

    def probe(self) -> str | None:
        """Write and remove a small file: None when that works, else why not.

        A storage error (full, read-only) is reported under `storage` (degraded, not
        ready) and answers None (the directory itself is usable); anything else
        (missing, no permission) is the answer.
        """
        try:
            with self._dir((), create=True) as dir_fd:
                name = f".probe.{secrets.token_hex(4)}"
                # A few KiB: an empty file only needs an inode, even on a full disk.
                write_new(dir_fd, name, b"\0" * 4096)
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:
                self.storage_failed(".probe", exc)
                return None
            return f"cannot write {self.root}: {exc.strerror or exc}"
        self.storage_ok()
        return None


# The write call, a seam the tests use to make writes fail like a full disk.
_os_write = os.write


def write_all(fd: int, data: bytes) -> None:
    """`os.write` until all of `data` is written (a short write is not an error)."""
    view = memoryview(data)
    while view:
        written = _os_write(fd, view)
        view = view[written:]


def write_new(dir_fd: int, name: str, data: bytes) -> None:
    """Create file `name` in `dir_fd` holding `data`: never an existing file or a link.

    If the write fails (a full disk), the half-written file is removed again.
    """
    fd = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o644,
        dir_fd=dir_fd,
    )
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
