"""One module per command: each exposes a plain function that takes a validated Config and runs."""
