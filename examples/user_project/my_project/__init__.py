"""A research project of one's own that runs its experiments with gradkit."""
