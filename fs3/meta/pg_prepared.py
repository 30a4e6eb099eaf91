"""Prepared statements run straight on libpq, for the one-statement namespace operations.

A metadata operation on PostgreSQL is one short statement, and a psycopg cursor's
``execute`` (query conversion, the prepared-statement manager, its generator-driven wait
loop, a cursor per result) cost about as much client time as the server spent on it: a
stat answered by the server in ~25 us took ~90 us more in the client. Here a statement is
prepared once per connection and run with ``PQexecPrepared`` (psycopg's documented
:mod:`psycopg.pq` wrapper, which lets other threads run while it waits), its parameters
sent and its rows read in text format, converted by the small tables below.

Only what the namespace statements use is converted: integers, floats, booleans, text,
NULL, and integer lists (a caller's groups) as parameters; integer, float, boolean, text
and void columns in results. Anything else is a programming error, raised at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fs3.errors import InvalidArgument

_PLACEHOLDER = re.compile(r"%s")

# Result column types (pg_type OIDs) and how their text form becomes Python.
_BOOL, _INT8, _INT2, _INT4, _TEXT, _OID, _FLOAT4, _FLOAT8, _VARCHAR, _VOID = (
    16,
    20,
    21,
    23,
    25,
    26,
    700,
    701,
    1043,
    2278,
)
_COLUMN: dict[int, Callable[[bytes], Any]] = {
    _BOOL: lambda v: v == b"t",
    _INT8: int,
    _INT2: int,
    _INT4: int,
    _OID: int,
    _FLOAT4: float,  # float() reads PostgreSQL's "Infinity" and "NaN" too
    _FLOAT8: float,
    _TEXT: lambda v: v.decode(),
    _VARCHAR: lambda v: v.decode(),
    _VOID: lambda v: None,
}


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


def decode_rows(result: Any) -> list[tuple]:
    """The rows of a ``PGresult`` in text format, each column converted by its type."""
    width = result.nfields
    convert = [_converter(result.ftype(col)) for col in range(width)]
    rows = []
    for row in range(result.ntuples):
        values = []
        for col in range(width):
            raw = result.get_value(row, col)
            values.append(None if raw is None else convert[col](raw))
        rows.append(tuple(values))
    return rows


def _converter(oid: int) -> Callable[[bytes], Any]:
    try:
        return _COLUMN[oid]
    except KeyError:
        raise TypeError(f"no conversion for result columns of type oid {oid}") from None


class PreparedStatements:
    """Statements prepared on one connection, each once, and run there.

    Not thread-safe: one connection serves one caller at a time (the store's pool).

    Args:
        pgconn: the connection's ``psycopg.pq.PGconn``.
    """

    def __init__(self, pgconn: Any) -> None:
        self._pgconn = pgconn
        self._names: dict[str, bytes] = {}

    def run(self, sql: str, params: tuple) -> list[tuple]:
        """Runs ``sql`` (``%s`` placeholders) with ``params`` and returns its rows.

        A statement the session no longer has is prepared again: psycopg deallocates every
        prepared statement of a connection after a ROLLBACK it sends, as a DISCARD ALL does.

        Raises:
            psycopg.Error: the server's error (its SQLSTATE and diagnostics), or
                ``psycopg.OperationalError`` when the connection failed.
        """
        from psycopg.pq import ExecStatus

        values = [encode(p) for p in params]
        name = self._names.get(sql)
        if name is None:
            name = self._prepare(sql)
        result = self._pgconn.exec_prepared(name, values)
        if result.status != ExecStatus.TUPLES_OK and _sqlstate(result) == _NO_SUCH_STATEMENT:
            self._names.clear()
            result = self._pgconn.exec_prepared(self._prepare(sql), values)
        if result.status != ExecStatus.TUPLES_OK:
            raise _error(self._pgconn, result)
        return decode_rows(result)

    def _prepare(self, sql: str) -> bytes:
        from psycopg.pq import ExecStatus

        name = b"fs3_%d" % len(self._names)
        result = self._pgconn.prepare(name, numbered(sql))
        if result.status != ExecStatus.COMMAND_OK:
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


_NO_SUCH_STATEMENT = b"26000"  # invalid_sql_statement_name


def _sqlstate(result: Any) -> bytes | None:
    from psycopg.pq import DiagnosticField

    return result.error_field(DiagnosticField.SQLSTATE)
