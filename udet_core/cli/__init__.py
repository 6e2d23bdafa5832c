"""Layer 8, cli: the command line and the notebook runner."""
