"""Trading: strategy, risk, execution, the trade recorder and the session loop."""
