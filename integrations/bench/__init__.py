"""Benchmarks run by ``python manage.py bench <name>`` against a real PostgreSQL and server.

Each benchmark lives in its own module (``ingest`` now; ``correlate``,
``evaluate`` and ``replay`` later) and exposes ``run(options, out)``.
"""
