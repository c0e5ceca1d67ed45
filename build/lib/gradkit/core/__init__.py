"""The experiment contract, global settings, validation and one job from config to run."""
