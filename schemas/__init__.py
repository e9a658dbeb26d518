"""Pydantic v2 models of every message on mailpulse's topics (contract sections 3 and 5)."""
