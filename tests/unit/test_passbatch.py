"""runtime/passbatch.py: pieces received in one loop pass leave as one write, in order;
a large piece that finds the batch empty leaves at once; never more than the limit held."""

from __future__ import annotations

import asyncio

from sshtunnel_mgr.runtime.passbatch import PassBatch


async def _next_pass() -> None:
    await asyncio.sleep(0)


async def test_small_pieces_of_one_pass_leave_as_one_write() -> None:
    out: list[bytes] = []
    batch = PassBatch(out.append, 100)
    for piece in (b"one", b"two", b"three"):
        batch.add(piece)
    assert out == [] and batch.held == 11
    await _next_pass()
    assert out == [b"onetwothree"] and batch.held == 0
    batch.add(b"four")
    await _next_pass()
    assert out == [b"onetwothree", b"four"]


async def test_a_large_piece_on_an_empty_batch_is_not_held_or_copied() -> None:
    out: list[bytes] = []
    batch = PassBatch(out.append, 100)
    big = b"x" * 50
    batch.add(big)
    assert out == [big] and out[0] is big
    batch.add(b"small")
    batch.add(big)  # behind held data: joined, order kept
    await _next_pass()
    assert out == [big, b"small" + big]


async def test_the_batch_leaves_once_it_reaches_the_limit() -> None:
    out: list[bytes] = []
    batch = PassBatch(out.append, 10)
    batch.add(b"1234")
    batch.add(b"567890")
    assert out == [b"1234567890"] and batch.held == 0
    await _next_pass()  # the queued pass finds nothing
    assert out == [b"1234567890"]


async def test_flush_hands_on_now_and_drop_forgets() -> None:
    out: list[bytes] = []
    batch = PassBatch(out.append, 100)
    batch.add(b"before eof")
    batch.flush()
    assert out == [b"before eof"]
    batch.add(b"lost")
    batch.drop()
    await _next_pass()
    assert out == [b"before eof"] and batch.held == 0
