"""Prepared statements run straight on libpq, for the one-statement namespace operations.

A metadata operation on PostgreSQL is one short statement, and a psycopg cursor's
``execute`` (query conversion, the prepared-statement manager, its generator-driven wait
loop, a cursor per result) cost about as much client time as the server spent on it: a
stat answered by the server in ~25 us took ~90 us more in the client. Here a statement is
prepared once per connection and run with ``PQexecPrepared`` (psycopg's :mod:`psycopg.pq`
wrapper, which lets other threads run while it waits). Parameters go in text format,
converted by :func:`encode`; rows come back in binary and are read by the connection's
own loaders (psycopg's ``Transformer``, as its cursors read them).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from fs3.errors import InvalidArgument

_PLACEHOLDER = re.compile(r"%s")


def numbered(sql: str) -> bytes:
    """``sql`` with its ``%s`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    if "%%" in sql:
        raise ValueError(f"a literal % in a prepared statement is not supported: {sql}")
    counter = iter(range(1, sql.count("%s") + 1))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql).encode()


def encode(value: object) -> bytes | None:
    """The text form of a parameter, None for NULL.

    Raises:
        InvalidArgument: text with a NUL byte (libpq would cut the value there).
        TypeError: a type no namespace statement takes.
    """
    if value is None:
        return None
    if value is True:
        return b"t"
    if value is False:
        return b"f"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()  # the shortest text that reads back as the same float
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidArgument("text contains a NUL byte", repr(value)[:80])
        return value.encode()
    if isinstance(value, list | tuple) and all(type(v) is int for v in value):
        return ("{" + ",".join(map(str, value)) + "}").encode()
    raise TypeError(f"no text form for a {type(value).__name__} parameter")


class PreparedStatements:
    """Statements prepared on one connection, each once, and run there.

    Not thread-safe: one connection serves one caller at a time (the store's pool).

    Args:
        conn: a ``psycopg.Connection``, in autocommit mode.
    """

    def __init__(self, conn: Any) -> None:
        from psycopg.adapt import Transformer

        self._pgconn = conn.pgconn
        self._rows = Transformer.from_context(conn)
        self._names: dict[str, bytes] = {}
        # Names are never reused: after the session lost some statements, others prepared
        # since may still exist under names a count of the cache would hand out again.
        self._serial = itertools.count()

    def run(self, sql: str, params: tuple) -> list[tuple]:
        """Runs ``sql`` (``%s`` placeholders) with ``params`` and returns its rows.

        ``sql`` is one of a fixed set of texts (the namespace's statements): each text stays
        prepared for the connection's life, so values go in ``params``, never in ``sql``.

        A statement the session no longer has is prepared again: psycopg deallocates every
        prepared statement of a connection after a ROLLBACK it sends, as a DISCARD ALL does.

        Raises:
            psycopg.Error: the server's error (its SQLSTATE and diagnostics), or
                ``psycopg.OperationalError`` when the connection failed.
        """
        values = [encode(p) for p in params]
        name = self._names.get(sql)
        if name is None:
            name = self._prepare(sql)
        result = self._pgconn.exec_prepared(name, values, result_format=_BINARY)
        if result.status != _TUPLES_OK and _sqlstate(result) == _NO_SUCH_STATEMENT:
            self._names.clear()
            result = self._pgconn.exec_prepared(self._prepare(sql), values, result_format=_BINARY)
        if result.status != _TUPLES_OK:
            raise _error(self._pgconn, result)
        self._rows.set_pgresult(result)
        return self._rows.load_rows(0, result.ntuples, tuple)

    def _prepare(self, sql: str) -> bytes:
        name = b"fs3_%d" % next(self._serial)
        result = self._pgconn.prepare(name, numbered(sql))
        if result.status != _COMMAND_OK:
            raise _error(self._pgconn, result)
        self._names[sql] = name
        return name


def _error(pgconn: Any, result: Any) -> Exception:
    """The psycopg error for a failed result: the server's, by its SQLSTATE; an
    OperationalError when the connection broke without one (a reset socket)."""
    import psycopg
    from psycopg.pq import ConnStatus

    if pgconn.status == ConnStatus.BAD and not _sqlstate(result):
        message = result.get_error_message() or pgconn.get_error_message()
        return psycopg.OperationalError(f"connection lost: {message!r}")
    return psycopg.errors.error_from_result(result)


_BINARY = 1  # result_format
# psycopg.pq.ExecStatus values, here so that a call imports nothing (psycopg stays optional).
_COMMAND_OK, _TUPLES_OK = 1, 2
_NO_SUCH_STATEMENT = b"26000"  # invalid_sql_statement_name


def _sqlstate(result: Any) -> bytes | None:
    from psycopg.pq import DiagnosticField

    return result.error_field(DiagnosticField.SQLSTATE)
