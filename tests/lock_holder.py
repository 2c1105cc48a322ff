"""The other job of the lock tests: a process that holds a run's lock until its stdin closes.

Usage: ``python -m tests.lock_holder STORAGE_URI ENDPOINT_URL|- RUN_NAME``; prints ``held`` once it
holds the lock.
"""
from __future__ import annotations

import sys

from saerec.runlock import LeaseTiming, RunLock
from saerec.storage import Store

if __name__ == "__main__":
    uri, endpoint, run = sys.argv[1:4]
    lock = RunLock(Store(uri, None if endpoint == "-" else endpoint), run, LeaseTiming(settle_s=0.5))
    lock.acquire()
    print("held", flush=True)
    sys.stdin.read()
    lock.release()
