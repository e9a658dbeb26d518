"""Pure rules over one profile: segments, triggers, guardrails, payloads (no Faust, no I/O)."""
