"""``python -m stress`` is ``taskq-stress``."""

from stress.cli import main

main()
