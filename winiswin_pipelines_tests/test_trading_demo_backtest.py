"""`make run`'s backtest step on the bundled April 2023 sample (through the code location's definitions)."""

from __future__ import annotations

from winiswin_pipelines.demo.steps import backtest, market_data


def test_make_run_backtest_step_shows_fees_funding_and_slippage_apart(db, demo_runner, capsys) -> None:
    market_data(demo_runner)
    lines = backtest(demo_runner)
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert "passed" in lines[0] and "FAILED" not in lines[0]
    costs = next(line for line in lines if line.startswith("costs"))
    assert all(word in costs for word in ("fees", "funding", "slippage"))
    assert "taker fee 0.050%" in next(line for line in lines if line.startswith("cost model"))
