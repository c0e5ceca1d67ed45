"""gradkit's configs, installed as the package `gradkit.conf` (Hydra's pkg://gradkit.conf)."""
