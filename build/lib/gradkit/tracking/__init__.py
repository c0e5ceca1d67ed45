"""MLflow, and only here: the store, runs, params, metrics and artifacts."""
