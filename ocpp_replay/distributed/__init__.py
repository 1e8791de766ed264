"""Replay on Locust's distributed runner (``locust -f <package>/distributed/locustfile.py``).

- ``plan``: which worker replays which charge points (a charger's sessions together, in
  order), the job and result messages between master, worker and the worker's engine
  process, and the merge of the workers' results into one run (pure, no I/O).
- ``engine``: ``python -m ocpp_replay.distributed.engine``, the worker's child process: our
  asyncio replay engine, fed one job on stdin, streaming one line per exchange and the result
  on stdout. Locust's gevent never shares a thread with it.
- ``locustfile``: the Locust side: options, the master's split and merge, the worker's bridge
  from the engine's lines to ``environment.events.request``.

See docs/distributed.md.
"""
