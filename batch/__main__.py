"""`python -m batch INPUT OUTPUT`: batch/cli.py."""

from batch.cli import main

raise SystemExit(main())
