"""``python -m wsclient``: the ``wsclient`` command line (see :mod:`wsclient.cli`)."""

from wsclient.cli import main

raise SystemExit(main())
