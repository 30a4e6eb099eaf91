"""Small files the platform's processes share through the state folder, all private.

The state folder holds the admin token, the database (with the run-token secret) and every
job's output, so nothing in it may be readable by another account: folders are made 0700
and files 0600 whatever the umask, and a folder left looser by hand or by an older release
is tightened when a process starts on it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

from hai.errors import ConfigError

log = logging.getLogger("hai.files")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
TRAVERSABLE_DIR = 0o711
STATE_ENTRIES = ("token", "hai.db*", "*.json", "logs", "runs", "nodes", ".*")
"""Names hai itself puts in a state folder (``.*``: files being replaced)."""


def private_dir(path: Path, only: tuple[str, ...] | None = None) -> Path:
    """Makes ``path`` a folder only its owner can enter (0700) and returns it.

    Missing folders on the way are created 0700 too. An existing ``path`` that group or
    others may use is tightened, with a warning, when it is ours and, with ``only``
    (glob patterns), holds nothing else: a loose folder of other files (a home, /etc) is
    the user's to close, not ours.

    Raises:
        ConfigError: ``path`` is a file or cannot be created, or a loose folder that is
            shared (sticky, like /tmp), another account's or holds other files.
    """
    missing = []
    here = path
    try:
        while not here.exists() and here != here.parent:
            missing.append(here)
            here = here.parent
        for folder in reversed(missing):
            folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            os.chmod(folder, PRIVATE_DIR)  # mkdir's mode passes through the umask
        info = path.stat()
    except (NotADirectoryError, FileExistsError):
        # ``here``: the first part of ``path`` that exists, the file in the way.
        raise ConfigError(f"{here} is a file, not a folder: give a folder path") from None
    except PermissionError as err:
        raise _not_ours(Path(err.filename or path)) from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} is a file, not a folder: give a folder path")
    if not os.access(path, os.W_OK | os.X_OK):  # another account's private folder
        raise _not_ours(path)
    if info.st_mode & 0o077:
        _refuse_to_tighten(path, info, only)
        log.warning("%s was mode %o; tightened to 700", path, stat.S_IMODE(info.st_mode))
        os.chmod(path, PRIVATE_DIR)
        if only is not None:  # a state folder from before: its old logs and database too
            tighten_below(path)
    return path


def traversable_dir(path: Path) -> Path:
    """Makes ``path`` a folder of ours that other accounts may pass through but not list
    (0711), and returns it: the way to the control folders of ranks that run as other
    accounts, which reach theirs by name only. Its parent must exist.

    Raises:
        ConfigError: ``path`` is a link, a file or another account's folder (someone made
            it first: whoever owns it could swap what is inside), or cannot be created.
    """
    try:
        path.mkdir(mode=TRAVERSABLE_DIR, exist_ok=True)
        info = path.lstat()
    except OSError as err:
        raise ConfigError(f"cannot create folder {path}: {err.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} is not a folder (a link or a file): remove it")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{path} belongs to uid {info.st_uid}, not to us: remove it")
    os.chmod(path, TRAVERSABLE_DIR)  # mkdir's mode passes through the umask
    return path


def _not_ours(path: Path) -> ConfigError:
    return ConfigError(f"cannot use {path}: permission denied; give a folder you may write")


def tighten_below(root: Path) -> None:
    """Takes group and other bits off every folder and file of ours under ``root``
    (symbolic links are left alone, and not followed)."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            entry = Path(folder) / name
            try:
                info = entry.lstat()
                if info.st_mode & 0o077 and info.st_uid == os.getuid():
                    if not stat.S_ISLNK(info.st_mode):
                        os.chmod(entry, stat.S_IMODE(info.st_mode) & ~0o077)
            except FileNotFoundError:
                pass  # removed or replaced while we walk


def _refuse_to_tighten(path: Path, info: os.stat_result, only: tuple[str, ...] | None) -> None:
    if info.st_mode & stat.S_ISVTX:
        why = "is shared (sticky, like /tmp)"
    elif info.st_uid != os.getuid():
        why = f"belongs to uid {info.st_uid}"
    else:
        other = [
            e.name
            for e in (path.iterdir() if only is not None else ())
            if not any(fnmatch.fnmatchcase(e.name, pattern) for pattern in only or ())
        ]
        if not other:
            return
        why = f"holds {sorted(other)[0]!r}, which hai did not put there"
    raise ConfigError(
        f"{path} is open to other accounts (mode {stat.S_IMODE(info.st_mode):o}) and {why}: "
        "use a new folder, or chmod 700 it yourself"
    )


def open_private(path: Path) -> BinaryIO:
    """Opens ``path`` to append bytes, created 0600 (a looser existing file is tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    return os.fdopen(fd, "ab")


def replace_text(path: Path, text: str) -> None:
    """Writes ``path`` (mode 0600) so that a concurrent reader sees the old text or the new,
    never a half-written file (write beside it, then rename over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
