"""Statements run straight on libpq (fs3.meta.pg_prepared): what goes in comes back the
same through a real PostgreSQL server, and what cannot go is refused before it is sent."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from fs3.errors import InvalidArgument
from fs3.meta.pg_prepared import PreparedStatements, numbered

pytestmark = pytest.mark.postgres


@pytest.fixture
def conn(postgres_url: str) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as c:
        c.execute("SET client_encoding = 'UTF8'")
        yield c


def test_placeholders_are_numbered_in_order() -> None:
    assert numbered("SELECT f(%s, ROW(%s)::t, %s)") == b"SELECT f($1, ROW($2)::t, $3)"
    with pytest.raises(ValueError, match="literal %"):
        numbered("SELECT 'a%%' || %s")


def test_values_come_back_as_they_went(conn: Any) -> None:
    """Text parameters in, binary rows out: floats exact, text UTF-8, NULL None."""
    run = PreparedStatements(conn).run
    sql = "SELECT %s::BIGINT, %s::INTEGER, %s::DOUBLE PRECISION, %s::BOOLEAN, %s::TEXT, %s::TEXT"
    floats = [1796686075.2416363, 0.1, -0.0, 5e-324, 1.7976931348623157e308]
    for value in floats:
        ((big, small, real, flag, text, null),) = run(
            sql, (-(2**63), 2**31 - 1, value, False, "ünï/çødé ✓", None)
        )
        assert (big, small, flag, text, null) == (-(2**63), 2**31 - 1, False, "ünï/çødé ✓", None)
        assert real == value and math.copysign(1, real) == math.copysign(1, value)
    ((inf, nan, yes),) = run(
        "SELECT %s::DOUBLE PRECISION, %s::DOUBLE PRECISION, %s::BOOLEAN",
        (math.inf, math.nan, True),
    )
    assert inf == math.inf and math.isnan(nan) and yes is True


def test_integer_lists_are_arrays(conn: Any) -> None:
    run = PreparedStatements(conn).run
    assert run("SELECT cardinality(%s::BIGINT[]), 7 = ANY(%s::BIGINT[])", ([], [3, 7])) == [
        (0, True)
    ]


def test_a_statement_is_prepared_once_per_connection(conn: Any) -> None:
    statements = PreparedStatements(conn)
    for n in range(3):
        assert statements.run("SELECT %s::INTEGER + 1", (n,)) == [(n + 1,)]
    (count,) = conn.execute(
        "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'fs3\\_%'"
    ).fetchone()
    assert count == 1


def test_a_nul_byte_is_refused_not_cut(conn: Any) -> None:
    run = PreparedStatements(conn).run
    with pytest.raises(InvalidArgument, match="NUL"):
        run("SELECT %s::TEXT", ("/a\x00/b",))


def test_unsupported_types_are_refused(conn: Any) -> None:
    run = PreparedStatements(conn).run
    with pytest.raises(TypeError, match="bytes"):
        run("SELECT %s::BYTEA", (b"x",))


def test_server_errors_keep_their_sqlstate(conn: Any) -> None:
    import psycopg

    run = PreparedStatements(conn).run
    with pytest.raises(psycopg.errors.DivisionByZero):
        run("SELECT 1 / %s::INTEGER", (0,))
    assert run("SELECT 2 / %s::INTEGER", (1,)) == [(2,)]  # the connection goes on


def test_statements_deallocated_by_the_session_are_prepared_again(conn: Any) -> None:
    """psycopg sends DEALLOCATE ALL after a ROLLBACK on a connection it prepared on."""
    statements = PreparedStatements(conn)
    assert statements.run("SELECT %s::INTEGER * 2", (4,)) == [(8,)]
    conn.execute("DEALLOCATE ALL")
    assert statements.run("SELECT %s::INTEGER * 2", (5,)) == [(10,)]
    assert statements.run("SELECT %s::INTEGER * 3", (5,)) == [(15,)]


def test_statements_prepared_after_a_deallocation_keep_their_names_apart(conn: Any) -> None:
    """After DEALLOCATE ALL, a new statement is prepared before an old one finds itself
    gone: the re-prepared ones must not take a name still in use (CI found this)."""
    statements = PreparedStatements(conn)
    queries = [f"SELECT %s::INTEGER + {k}" for k in range(4)]
    for q in queries[:3]:
        statements.run(q, (1,))
    conn.execute("DEALLOCATE ALL")
    assert statements.run(queries[3], (1,)) == [(4,)]  # new: prepared under a new name
    for _ in range(2):
        for k, q in enumerate(queries):  # the old ones find themselves gone, then all run
            assert statements.run(q, (1,)) == [(1 + k,)]


def test_the_result_statuses_are_psycopgs() -> None:
    from psycopg.pq import ExecStatus

    from fs3.meta import pg_prepared

    assert (pg_prepared._COMMAND_OK, pg_prepared._TUPLES_OK) == (
        ExecStatus.COMMAND_OK,
        ExecStatus.TUPLES_OK,
    )
