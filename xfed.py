#!/usr/bin/env python3
"""Entry point so `python xfed.py ...` works from the repository root."""
from xfed.cli import main

if __name__ == "__main__":
    main()
