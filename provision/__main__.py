"""``python -m provision``."""

from .cli import main

raise SystemExit(main())
