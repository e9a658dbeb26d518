"""Co-occurrence counts on their way from the profile agent to the co-occurrence agent.

Each step of the profile hop yields the (product, other product, weight) pairs of the events it
folded.  They used to leave as one internal record per target partition per step: at a shop's live
rates, with a few events per step, that was ~0.46 records of ``<app>-co-occurrence`` per input event
(``make bench-hop`` with ``BENCH_BATCH=20``), each paying a produce, a broker round and the
co-occurrence agent's per-record cost for a couple of pairs.  :class:`PairBuffer` sums them per
product instead, and the worker sends them at the next offset commit's cut (before the commit's
flush, so no offset is committed before the pairs of the events it covers are delivered), or at once
when it holds :data:`MOST_PAIRS` counts.  Recommendations are a slow signal: their counts now
move once per commit interval (about a second) instead of once per step.

:class:`CountedProducts` bounds how many products the co-occurrence agent's table holds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from streams.routing import RECORD_BYTES, partition_for

#: (product, other product) counts held, over all source partitions, before the buffer asks to be sent.
MOST_PAIRS = 20_000


class PairBuffer:
    """Pair counts per source partition (the profile partition whose events made them), then per
    product: ``{other product: weight}``, summed."""

    def __init__(self, partitions: int, most_pairs: int = MOST_PAIRS) -> None:
        self.partitions = partitions
        self.most_pairs = most_pairs
        self._by_source: dict[int, dict[str, dict[str, int]]] = {}
        self.held = 0  # (product, other) counts held, over all source partitions

    def add(self, source: int, pairs: Mapping[str, Sequence[Sequence[Any]]]) -> bool:
        """Adds one step's pairs (``product -> [[other, weight], ...]``); True once the buffer is full."""
        counts = self._by_source.setdefault(source, {})
        for product, counted in pairs.items():
            others = counts.setdefault(product, {})
            for other, weight in counted:
                held = others.get(other)
                if held is None:
                    others[other] = weight
                    self.held += 1
                else:
                    others[other] = held + weight
        return self.held >= self.most_pairs

    def take(self) -> list[tuple[int, bytes]]:
        """Everything held, as records of the co-occurrence topic: ``(target partition, value)``, the
        value ``[[product, [[other, weight], ...]], ...]`` as the co-occurrence agent reads it (a
        product whose pairs would not fit one record comes in several entries; their counts add up).
        A record holds at most :data:`~streams.routing.RECORD_BYTES` of JSON, counted as orjson
        writes it (a product id is at most 512 characters, so one pair is at most ~3 KiB).
        A record the producer refuses fails the output (:meth:`streams.output.OutputProducer.send`),
        so nothing is committed past the events whose pairs it carried."""
        by_target: dict[int, dict[str, dict[str, int]]] = {}
        for counts in self._by_source.values():
            for product, others in counts.items():
                merged = by_target.setdefault(partition_for(product, self.partitions), {}).setdefault(product, {})
                for other, weight in others.items():
                    merged[other] = merged.get(other, 0) + weight
        self._by_source, self.held = {}, 0
        records: list[tuple[int, bytes]] = []
        dumps = orjson.dumps
        for target, products in by_target.items():
            entries: list[list[Any]] = []
            size = 2  # the record's brackets
            filled = False  # the record holds a pair
            for product, others in products.items():
                counted: list[list[Any]] = []
                entries.append([product, counted])
                head = len(dumps(product)) + 6  # '[product,[...]],' as orjson writes it (UTF-8, escapes)
                size += head
                for other, weight in others.items():
                    pair = len(dumps(other)) + len(str(weight)) + 4  # '[other,weight],'
                    if size + pair > RECORD_BYTES and filled:  # full: the rest goes in the next record
                        records.append((target, dumps([entry for entry in entries if entry[1]])))
                        counted = []
                        entries = [[product, counted]]
                        size = 2 + head
                    counted.append([other, weight])
                    size += pair
                    filled = True
            records.append((target, dumps([entry for entry in entries if entry[1]])))
        return records

    def drop(self, sources: Iterable[int]) -> None:
        """Forgets the pairs of source partitions this worker lost: their events were not committed,
        so the new owner folds them again and counts their pairs itself."""
        for source in sources:
            counts = self._by_source.pop(source, None)
            if counts:
                self.held -= sum(len(others) for others in counts.values())


#: The most products one count deletes: a table far past its bound (the bound lowered, or written by a
#: version without one) shrinks by up to two products per count, not all at once in one record's handling.
EVICTED_PER_COUNT = 2


class CountedProducts:
    """The products the ``product-neighbours`` table holds, per partition, least recently counted
    first, and at most ``most`` in each: a product id comes from the input, so an upstream that sends
    a session id as ``product_id`` would otherwise grow the table, its changelog and the compacted
    recommendations topic by one key per session, for good.  Past the bound the least recently counted
    products go (:meth:`counted` names them; the caller deletes them from the table and the topic).

    A partition's order is built the first time it is counted on this worker, from what the table
    holds: then the products with the fewest counts go first, until each is counted again."""

    def __init__(self, most: int, load: Callable[[int], Iterable[tuple[bytes, bytes]]]) -> None:
        self.most = most
        self._load = load  # a partition's (key, value) pairs, as the table holds them
        self._order: dict[int, OrderedDict[bytes, None]] = {}

    def counted(self, partition: int, key: bytes) -> list[bytes]:
        """``key`` was counted in ``partition``: the keys to delete now to stay within the bound."""
        order = self._order.get(partition)
        if order is None:
            order = self._order[partition] = self._built(partition)
        order[key] = None
        order.move_to_end(key)
        gone: list[bytes] = []
        while len(order) > self.most and len(gone) < EVICTED_PER_COUNT:
            gone.append(order.popitem(last=False)[0])
        return gone

    def _built(self, partition: int) -> OrderedDict[bytes, None]:
        weights: list[tuple[int, bytes]] = []
        for key, value in self._load(partition):
            if key[:1] == b"\xff":  # the partition's applied-offset marker: no product (not UTF-8)
                continue
            try:
                counts = orjson.loads(value)
                weight = sum(counts.values()) if isinstance(counts, dict) else 0
            except (ValueError, TypeError):  # (a damaged value: first to go)
                weight = 0
            weights.append((weight if isinstance(weight, int) else 0, key))
        weights.sort()
        return OrderedDict.fromkeys(key for _, key in weights)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forgets the partitions this worker lost: a new owner builds their order from the table."""
        for partition in partitions:
            self._order.pop(partition, None)
