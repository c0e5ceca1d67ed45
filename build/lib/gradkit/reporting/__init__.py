"""Reports read from the store: the summary of every run, and a run replayed and diffed."""
