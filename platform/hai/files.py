"""Small files the platform's processes share through the state folder, all private.

The state folder holds the admin token, the database (with the run-token secret) and every
job's output, so nothing in it may be readable by another account: folders are made 0700
and files 0600 whatever the umask, and a folder left looser by hand or by an older release
is tightened when a process starts on it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

from hai.errors import ConfigError

log = logging.getLogger("hai.files")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Makes ``path`` a folder only its owner can enter (0700) and returns it.

    Missing folders on the way are created 0700 too. An existing ``path`` that group or
    others may use is tightened, with a warning.

    Raises:
        ConfigError: ``path`` is a file or cannot be created, or a loose folder that is
            shared (sticky, like /tmp) or another account's, so not ours to tighten.
    """
    missing = []
    here = path
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    try:
        for folder in reversed(missing):
            folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            os.chmod(folder, PRIVATE_DIR)  # mkdir's mode passes through the umask
        info = path.stat()
    except (NotADirectoryError, FileExistsError):
        raise ConfigError(f"{path} is a file, not a folder: give a folder path") from None
    except PermissionError as err:
        raise ConfigError(
            f"cannot create {err.filename or path}: permission denied; give a folder you may write"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} is a file, not a folder: give a folder path")
    loose = info.st_mode & 0o077
    if loose:
        if info.st_uid != os.getuid() or info.st_mode & stat.S_ISVTX:
            raise ConfigError(
                f"{path} is open to other accounts (mode {stat.S_IMODE(info.st_mode):o}) and "
                "shared or not ours to tighten: use a folder of your own"
            )
        log.warning("%s was mode %o; tightened to 700", path, stat.S_IMODE(info.st_mode))
        os.chmod(path, PRIVATE_DIR)
    return path


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
