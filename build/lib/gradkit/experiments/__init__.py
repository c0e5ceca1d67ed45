"""One module per demonstration; the module name is the experiment's name."""
