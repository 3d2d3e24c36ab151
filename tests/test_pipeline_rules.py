"""The FIFO's one table (pipeline/rules.py): the per-message lookups the relay fast paths index
are the same rules as the general path's functions."""
from pgml_server.pipeline import rules


def test_tables_are_the_rules():
    for t in range(256):
        assert rules.ANSWER_KIND[t] == rules.ANSWERED_BY.get(t)
        for kind in (rules.EXT, rules.SYNC, rules.SIMPLE):
            assert (t in rules.FINISHED_BY[kind]) == rules.finishes(kind, t)


def test_what_finishes_what():
    for t in b"123TnCIsE":
        assert rules.finishes(rules.EXT, t)
    assert not rules.finishes(rules.EXT, ord("Z")) and not rules.finishes(rules.EXT, ord("D"))
    assert rules.finishes(rules.SYNC, ord("Z")) and rules.finishes(rules.SIMPLE, ord("Z"))
    assert not rules.finishes(rules.SIMPLE, ord("E"))          # a simple Query's error is not final
    assert rules.skips_to_sync(rules.EXT, ord("E")) and not rules.skips_to_sync(rules.SIMPLE, ord("E"))
    assert rules.forwarded_kind(ord("H"), b"") is None and rules.forwarded_kind(ord("H"), b"x") == rules.EXT
