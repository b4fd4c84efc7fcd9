"""Bounded fuzz runs of the two doors that take untrusted input (see fuzzing.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import decode_once, mutated_files, seed_corpus

CORPUS = seed_corpus()


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(data=mutated_files(CORPUS), min_size=st.sampled_from([None, 8, 16, 224]))
def test_decoding_mutated_files_gives_an_image_or_image_error(data: bytes, min_size: int | None) -> None:
    decode_once(data, min_size)
