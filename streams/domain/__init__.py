"""The pure domain: profiles, their fold in event time, identity, merges, segment and trigger rules.

Nothing here imports Faust, Kafka, RocksDB or a JSON or YAML library (``tests/unit/test_layout.py``):
a step takes decoded values and returns values; the plumbing around it (``streams/``) reads, decodes,
encodes, stores and sends them.
"""
