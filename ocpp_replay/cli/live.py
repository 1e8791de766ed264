"""Live displays on stderr while a long command runs (a terminal only; silent otherwise)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live

    from ocpp_replay.simulate import FleetProgress

__all__ = ["FleetDisplay"]


class FleetDisplay:
    """``simulate``'s line: chargers online, transactions, CALLs sent, backend commands, problems.

    Redrawn in place four times a second; removed when the fleet is done (the summary follows).
    """

    def __init__(self, console: Console, chargers: int, live: bool) -> None:
        self.console = console
        self.chargers = chargers
        self.live: Live | None = None
        self.enabled = live

    def _line(self, p: FleetProgress | None) -> str:
        if p is None:
            return f"simulate: starting {self.chargers} chargers"
        problems = f", [red]{p.problems} problems[/]" if p.problems else ", no problems"
        return (
            f"simulate: {p.online}/{p.chargers} chargers connected, {p.transactions} transactions, "
            f"{p.calls} CALLs sent, {p.backend_commands} backend commands{problems}"
        )

    def __enter__(self) -> FleetDisplay:
        if self.enabled:
            from rich.live import Live

            self.live = Live(self._line(None), console=self.console, transient=True, auto_refresh=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, progress: FleetProgress) -> None:
        if self.live is not None:
            self.live.update(self._line(progress), refresh=True)
