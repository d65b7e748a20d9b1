"""SQL analysis: parse with sqlglot, accept an allow-listed subset, return a typed plan."""
