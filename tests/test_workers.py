"""The decoding worker processes (imgcls.data.workers): they outlive the threads that use them."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgcls.data.workers import can_fork, process_pool, submit

pytestmark = pytest.mark.skipif(not can_fork(), reason="fork only")


def test_workers_outlive_the_thread_that_first_gave_them_work() -> None:
    # prediction's device-decoding thread submits what the device refuses and ends before the pool;
    # a worker it forked was killed with it (Linux's parent-death signal follows the forking thread),
    # perhaps holding the pool's queue lock, and the pool hung at its shutdown (CI's 90-minute hang)
    pool, _ = process_pool(2)
    try:
        with ThreadPoolExecutor(1) as helper:
            assert helper.submit(lambda: submit(pool, os.getpid).result(timeout=30)).result() != os.getpid()
        pids = {submit(pool, os.getpid).result(timeout=30) for _ in range(8)}  # the helper thread is gone
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_a_pool_made_in_a_thread_that_ends_keeps_working() -> None:
    made: list = []
    t = threading.Thread(target=lambda: made.append(process_pool(1)))
    t.start()
    t.join()
    pool, _ = made[0]
    try:
        assert submit(pool, os.getpid).result(timeout=30) != os.getpid()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
