"""Builders of demo and test assets (tiny models, tokenizer, synthetic corpus, fake MMLU).

Not part of the installed package (pyproject packages only ``launch`` and ``kd``): the
embedded demo and the tests import it from the repository root (``python -m assets.demo``).
Every builder is idempotent, so the demo and the tests share one cache of fixtures.
"""
