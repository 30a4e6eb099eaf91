"""Per-chunk locks exclude holders of the same chunk and vanish with their last user."""

from __future__ import annotations

import threading
import time

from fs3.storage.locks import ChunkLocks


def test_same_key_excludes_other_keys_do_not() -> None:
    locks = ChunkLocks()
    inside: list[str] = []
    overlap = []
    release = threading.Event()

    def hold(key: str, name: str) -> None:
        with locks.hold(key):
            inside.append(name)
            overlap.append(len([n for n in inside if n.startswith(key)]))
            release.wait(5)
            inside.remove(name)

    threads = [threading.Thread(target=hold, args=(k, f"{k}{i}")) for k in "ab" for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(inside) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert sorted(n[0] for n in inside) == ["a", "b"]  # one holder per key at a time
    assert len(locks) == 2  # waiters keep their key's entry
    release.set()
    for t in threads:
        t.join(5)
    assert max(overlap) == 1
    assert len(locks) == 0


def test_entry_is_dropped_after_an_exception() -> None:
    locks = ChunkLocks()
    try:
        with locks.hold(("chain", 1, 2)):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert len(locks) == 0
    with locks.hold(("chain", 1, 2)):  # and the key can be taken again
        assert len(locks) == 1
