"""The subcommands: each takes a Profile and returns a typed result with to_json()."""
