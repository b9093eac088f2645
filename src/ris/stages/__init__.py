"""Thin DVC entry points: each reads params.yaml, calls one library function, writes its outputs."""

STAGES = ("download", "extract", "reduce", "index", "evaluate", "report")
