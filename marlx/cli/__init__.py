"""Command-line tools: `rllib` (the classic RLlib CLI) and `marlx`."""
