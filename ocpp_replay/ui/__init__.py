"""The web UI (``ocpp-replay ui``, ``ocpp-replay proxy --ui``): sessions, sequence diagrams, runs
and triage, served from the installed package (no build step, no CDN) off the relay path.

- :mod:`ocpp_replay.ui.server`: :class:`~ocpp_replay.ui.server.UiServer`, the aiohttp app over
  one capture opened read-only, and ``serve`` (until SIGINT/SIGTERM);
- :mod:`ocpp_replay.ui.data`: what the pages show, read from the capture (blocking, in threads);
- :mod:`ocpp_replay.ui.query`: the filter expressions over frames, compiled to SQL;
- :mod:`ocpp_replay.ui.triage`: a difference group as a rule in a rules file;
- :mod:`ocpp_replay.ui.process`: ``ocpp-replay ui`` in a process of its own beside a proxy;
- ``static/``: the page (HTML, CSS and JavaScript; no build step, nothing from a CDN).
"""
