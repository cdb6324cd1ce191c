"""The operator web UI: server-rendered pages, one module per area."""
