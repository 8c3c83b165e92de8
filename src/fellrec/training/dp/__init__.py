"""User-level DP-SGD on a host: its settings and accounting, its secrets, its privacy ledger."""
