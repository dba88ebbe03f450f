"""``python -m dromos`` is the ``dromos`` command."""

from dromos.cli import main

main()
