"""``cli_app:app`` for ``dromos serve`` and ``dromos worker`` subprocesses (``$DROMOS_BROKER``
names the store)."""

from tasks_app import create_app  # type: ignore[import-not-found]  # run from this folder

app = create_app("sqlite:///./unused-because-DROMOS_BROKER-wins.db")
