"""What `guie verify` (guie/stages/verify.py) is built from: its report, and the fenced child
interpreter that loads and calls someone else's model as the host does (`child.py`, run by path,
and `harness.py`, which starts, times, watches and kills it)."""
