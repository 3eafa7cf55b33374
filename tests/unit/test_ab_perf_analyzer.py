"""loadtest/ab_perf_analyzer.py's parts that run without perf_analyzer: the worktree it compares
against, made and removed, and the summary of the per-round ratios."""

from __future__ import annotations

import subprocess

from loadtest.ab_perf_analyzer import REPO_ROOT, summary, worktree


def test_the_worktree_of_a_ref_is_checked_out_then_removed() -> None:
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    with worktree(head) as tree:
        assert (tree / "server" / "app.py").is_file()
        listed = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "worktree", "list"], check=True, capture_output=True, text=True
        ).stdout
        assert str(tree) in listed
    assert not tree.exists()
    listed = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "worktree", "list"], check=True, capture_output=True, text=True
    ).stdout
    assert str(tree) not in listed


def test_the_summary_is_the_median_ratio_and_the_rounds_range() -> None:
    assert summary([1.2, 0.9, 1.0]) == "median 1.000 (rounds 0.90-1.20)"
