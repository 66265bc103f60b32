"""Exit codes of a stage child (`python -m xfed.node.stage_runner`): what it already reported.

0 done, 3 error reported, 4 stopped on request, 5 its daemon died; anything else is for the
daemon to report.
"""

EXIT_DONE = 0
EXIT_ERROR_REPORTED = 3
EXIT_STOPPED = 4
EXIT_ORPHANED = 5
