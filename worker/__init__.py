"""sessionkeeper runtime: settings, database, mapping, Celery, API and CLI."""
