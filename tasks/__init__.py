"""sessionkeeper jobs: one module per job, logic callable without Celery."""
