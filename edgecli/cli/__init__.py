"""The command line: a thin root app and one module per verb."""
