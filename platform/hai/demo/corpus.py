"""The demo's training text: documentation strings of Python's own standard library.

Every machine that runs the demo has them, they need no download and no licence check,
and they are real English prose with code in it, so a tiny model's loss falls visibly
within a few hundred steps. The same Python gives the same corpus, byte for byte.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

# Pure-Python modules with long, stable docstrings; a module missing from a trimmed
# Python build is skipped.
MODULES = (
    "argparse",
    "ast",
    "asyncio.events",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "configparser",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.server",
    "imaplib",
    "inspect",
    "ipaddress",
    "json",
    "logging",
    "mailbox",
    "mimetypes",
    "netrc",
    "numbers",
    "optparse",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "shlex",
    "shutil",
    "smtplib",
    "socketserver",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "typing",
    "unittest.case",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "wave",
    "weakref",
    "zipfile",
)
MIN_CHARS = 40
"""Shorter docstrings ("Return self.") teach the model little but the end-of-text token."""


def _documented(module: object) -> Iterator[object]:
    """The module, then its public classes and functions, then the classes' methods."""
    yield module
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            yield value
        if inspect.isclass(value):
            for member_name, member in sorted(vars(value).items()):
                if not member_name.startswith("_") and inspect.isfunction(member):
                    yield member


def documents() -> list[str]:
    """Every docstring of MODULES at least MIN_CHARS long, in a fixed order, each once."""
    seen: set[str] = set()
    docs = []
    with warnings.catch_warnings():  # some modules warn about their deprecated members
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            for thing in _documented(module):
                doc = inspect.getdoc(thing)
                if doc and len(doc) >= MIN_CHARS and doc not in seen:
                    seen.add(doc)
                    docs.append(doc)
    return docs


def write_corpus(url: str, shards: int = 4, **storage_options: object) -> list[str]:
    """Writes the documents as ``shards`` parquet files (column ``text``) under ``url``.

    Returns the URLs written. Documents are dealt round-robin, so every shard holds
    text of every module.
    """
    docs = documents()
    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    fs.makedirs(root, exist_ok=True)
    written = []
    for shard in range(shards):
        path = f"{root.rstrip('/')}/part-{shard:03d}.parquet"
        table = pa.table({"text": docs[shard::shards]})
        with fs.open(path, "wb") as f:
            pq.write_table(table, f)
        written.append(fs.unstrip_protocol(path))
    return written
