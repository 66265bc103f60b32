#!/usr/bin/env python3
"""Entry point so `python xfed.py ...` works from the repository root."""
import sys

try:
    from xfed.cli import main
except ModuleNotFoundError as err:  # a Python without the venv: say how to set up, not a traceback
    if (err.name or "").split(".")[0] == "xfed":
        raise
    sys.stderr.write(f"error: xfed's dependencies are not installed in this Python ({sys.executable}: no module "
                     f"{err.name!r}); set up once with ./scripts/setup.sh, then `source env.sh` (or run "
                     ".venv/bin/python xfed.py ...)\n")
    sys.exit(2)

if __name__ == "__main__":
    main()
