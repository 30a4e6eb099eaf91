"""Alembic's script folder for hai's state store: ``env.py`` and one file per revision in
``versions/``. :mod:`hai.store.migrate` runs them; nothing here is imported directly."""
