"""The pure OCPP core: no sockets, no files, no clock of its own.

frames (parse and build OCPP-J), pairing (results to their CALLs), paths (payload paths),
correlate (ids the backend assigns), schedule (the replay timeline), rules (diff rules),
diff (message comparison), compare (two runs against each other), results (what a run
produced), schemas and validate (the official JSON schemas), text (safe display of charger
text). It imports nothing else of ocpp_replay but :mod:`ocpp_replay.errors`, and no I/O
library; ``tests/test_architecture.py`` checks it.
"""
