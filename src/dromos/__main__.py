"""``python -m dromos`` is the ``dromos`` command."""

from dromos.cli import main

# Guarded: process pools started with "spawn" re-import the main module in each child.
if __name__ == "__main__":
    main()
