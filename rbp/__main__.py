"""``python -m rbp``: the ``rbp`` command."""

from rbp.cli import run

if __name__ == "__main__":
    run()
