"""``python -m acgan.cli``: the ``acgan`` console script."""

from acgan.cli import main

main()
