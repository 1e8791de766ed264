"""Names vulture cannot see used: called by a framework, or read as data. Checked by test_deadcode.py.

Add a name here only when something outside our code calls it (say what); dead code is removed.
"""
# ruff: noqa
# mypy: ignore-errors

_ = object()

# mitmproxy addon hooks (mitmproxy calls them by name)
_.configure
_.websocket_start
_.websocket_message
_.websocket_end
# asyncio.Protocol callbacks (the event loop calls them)
_.eof_received
_.connection_made
_.pause_writing
_.resume_writing
# typer commands (registered by decorator, called by typer)
_main
show
tail
simulate
demo
# rich.Console.height: a property setter, set by cli/common.py's console for rich
_.height
# module __getattr__ (PEP 562: Python calls it for a name the module does not define)
__getattr__
# sqlite-utils migrations (registered by decorator, applied by Migrations)
m001_capture
m002_runs
m003_wire
m004_replay_held
m005_retention
# RFC 6455 opcodes, named for completeness of the table
PING
PONG
# exception info parameters of __exit__/__aexit__
tb
# rich Table attribute set for rendering
_.caption
# scenario file type alias (documentation of the TOML format)
Duration
# dataclass fields that are part of a result or record (serialised with asdict/as_dict, read by tests)
other_frames
auth_status
meter_stop
stop_reason
_.meter_stop
_.stop_reason
_.auth_status
id_maps
local_id
undelivered
_.undelivered
_.failed_expectations
remote_addr
upstream_url
offered_subprotocols
handshake_note
batches
_.batches
# Locust: listeners registered by decorator, the user class and its task found by Locust,
# the exit code its main reads (ocpp_replay/distributed/locustfile.py)
_options
_init
OcppReplayUser
_.wait_time
_.idle
_.process_exit_code
