"""``dromos demo``: the whole story, end to end, on the embedded SQLite broker.

``app.py`` holds the demo's tasks (a module the worker processes import by name);
``show.py`` runs the story: it starts worker processes, enqueues a realistic mix of jobs,
shows them live, checks every outcome and prints a summary. The demo doubles as a smoke test:
any unexpected outcome makes it exit 1.
"""
