"""``python -m provision``: the command as a process (see :mod:`provision.process`)."""

import sys

try:
    from .process import main
except KeyboardInterrupt:  # Ctrl-C while the process's own module, the first to run, was being imported
    from .interrupt import EXIT_INTERRUPTED, INTERRUPTED

    print(INTERRUPTED, file=sys.stderr)
    raise SystemExit(EXIT_INTERRUPTED) from None

raise SystemExit(main())
