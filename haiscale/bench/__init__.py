"""``python -m haiscale.bench``: each parallel wrapper against its usual peer, one run.

Every section is a module here with ``run(quick: bool) -> list[str]``: it launches its
own ranks, times ours and the peer in the same run, and returns the lines of its table
(a title line first). ``quick`` shrinks models and step counts for the smoke test.
"""
