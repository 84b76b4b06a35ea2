"""Filtered pages over a time index, on a real store: every match once, in order, whatever the filter skips."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haulmesh.tender.v1 import tender_pb2
from services.runtime import Collection, Page, TimeIndex

COUNT = 40


@pytest.fixture
async def tenders(client) -> Collection[tender_pb2.Tender]:
    collection = Collection(client, tender_pb2.Tender, prefix="tender:{index-test}", index_key="tenders:{index-test}")
    for i in range(COUNT):
        tender = tender_pb2.Tender(name=f"tenders/t{i:02d}", tms_load_id=f"L{i}", weight_lb=i)
        tender.create_time.FromMilliseconds(1_700_000_000_000 + i)
        await client.set(collection.key(f"t{i:02d}"), tender.SerializeToString())
        await client.zadd(collection.index.key, {TimeIndex.member(1_700_000_000_000 + i, f"t{i:02d}"): 0})
    return collection


async def _all_pages(collection, keep, size, newest_first):
    seen, after, pages = [], "", 0
    while True:
        found, after = await collection.filtered_page(Page(after, size), keep, newest_first=newest_first, batch=7)
        pages += 1
        seen += [t.weight_lb for t in found]
        assert len(found) <= size
        if not after:
            return seen, pages
        assert len(found) == size  # a cursor only after a full page


# The fixture's resources are only read, so sharing them across generated examples is sound.
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(divisor=st.integers(1, 9), size=st.integers(1, 12), newest_first=st.booleans())
async def test_every_match_once_in_order_and_no_empty_last_page(tenders, divisor, size, newest_first) -> None:
    expected = [i for i in range(COUNT) if i % divisor == 0]
    if newest_first:
        expected.reverse()
    seen, pages = await _all_pages(tenders, lambda t: t.weight_lb % divisor == 0, size, newest_first)
    assert seen == expected
    assert pages == max(1, -(-len(expected) // size))  # no page comes back empty after the last match


async def test_a_filter_matching_nothing_is_one_empty_page(tenders) -> None:
    assert await tenders.filtered_page(Page("", 5), lambda t: False) == ([], "")
