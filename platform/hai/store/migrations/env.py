"""Alembic's entry point for hai's state store.

It migrates the connection :func:`hai.store.migrate.migrate` hands over in
``config.attributes``, inside that function's locked transaction (Alembic sees the
transaction is open and neither begins nor commits one). hai never runs Alembic from a
command line, so there is no offline (``--sql``) mode and no ``alembic.ini``.
"""

from alembic import context

from hai.store.schema import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
