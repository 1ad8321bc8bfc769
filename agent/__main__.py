"""`python -m agent` is `cp-agent` (used by the Reset re-exec, which keeps the PID)."""

from agent.cli import main

raise SystemExit(main())
