"""Multirun sweeps: the job plan, parent runs, the sweep report and deferred closing."""
