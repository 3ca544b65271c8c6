"""Read the whole directory into a snapshot in a process of its own, for a worker.

A whole read of a large directory allocates several times the snapshot's size on the way
(rows, per-chunk columns) and holds the interpreter for seconds: done in the worker, that
memory stays in its heap for good and its requests wait for the interpreter meanwhile. Here
a child process reads and builds, and hands the worker the finished snapshot, pickled (its
columns are a few large arrays and buffers: tens of milliseconds to load). The database URL
comes on stdin, never on the command line (it may carry a password).

    python -m referral.directory.readbuild  < url  > snapshot.pickle
"""

from __future__ import annotations

import pickle
import subprocess
import sys

from sqlalchemy import create_engine

from referral.directory.snapshot import Snapshot, read_all

# A child building a directory of a million locations takes under a minute here.
CHILD_SECONDS = 600


def read_in_child(url: str) -> Snapshot:
    """The snapshot the child process reads (raises CalledProcessError if it fails)."""
    done = subprocess.run(
        [sys.executable, "-m", __name__],
        input=url.encode(),
        capture_output=True,
        check=True,
        timeout=CHILD_SECONDS,
    )
    snapshot = pickle.loads(done.stdout)
    assert isinstance(snapshot, Snapshot)
    return snapshot


def main() -> None:
    url = sys.stdin.read().strip()
    engine = create_engine(url, hide_parameters=True)
    with engine.connect() as connection:
        snapshot = read_all(connection)
    engine.dispose()
    sys.stdout.buffer.write(pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    main()
