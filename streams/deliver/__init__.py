"""``mailpulse deliver``: the reference ESP connector (contract v1.1).  ``render`` (templates to an
e-mail) and ``unsubscribe`` (signed links) are pure; ``ledger``, ``targets`` and ``service`` are the
plumbing around them (RocksDB, SMTP/HTTP, Kafka)."""
