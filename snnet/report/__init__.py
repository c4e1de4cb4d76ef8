"""Self-contained interactive HTML reports (eval.py's, lab.py's and compose.py's report.html) and
the route drawings they share with compose.py's ``svg/`` files."""
