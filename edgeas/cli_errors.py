"""How the `edgeas` command line reports an error: `error: MESSAGE` and `hint: HINT`, one
line each, never a traceback unless --debug (or EDGEAS_DEBUG=1) asks for it.

Two kinds arrive here. An EdgeasError from a command (exit 1 or 2, edgeas/errors.py), and
click's usage errors: an unknown command or option, a missing option, a bad value (exit
2). Those come from whichever click the installed typer uses: the click package (typer up
to 0.25) or the copy typer vendors as `typer._click` (from 0.26, which no longer depends
on click at all). They are found by looking at what is imported, not by version numbers,
so a typer that moves them again fails the newest-versions check in CI (.ci/newest)
rather than a station.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from edgeas.errors import EdgeasError

console = Console(stderr=True)

# Where click's exceptions live: the click package, typer's vendored copy.
_CLICK_EXCEPTION_MODULES = ("click.exceptions", "typer._click.exceptions")


def report(message: str, hint: str | None = None) -> None:
    """Print the error and its hint. Not wrapped at the terminal's width: a log or a
    grep keeps one line per error. Escaped: a message quoting `[OPTIONS]` is text, not
    rich markup."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """The exception class `name` of every click imported so far. The click that typer
    raises from is among them, since typer imported it; a click that nothing imported
    cannot have raised anything, so an absent one (typer >= 0.26 without the click
    package) is simply not looked for."""
    found = []
    for module in _CLICK_EXCEPTION_MODULES:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def report_click_error(exc: BaseException) -> int | None:
    """Report a click exception (usage error or other) and return its exit code; None
    when `exc` is not one, for the caller to re-raise."""
    if not isinstance(exc, _click_classes("ClickException")):
        return None
    code = int(getattr(exc, "exit_code", 1))
    if isinstance(exc, _click_classes("NoArgsIsHelpError")):
        exc.show()  # `edgeas` alone: the message is the help text itself
        return code
    ctx = getattr(exc, "ctx", None)
    hint = None
    if ctx is not None:
        helps = getattr(ctx, "help_option_names", None) or ["--help"]
        hint = f"run '{ctx.command_path} {helps[0]}'"
    report(_one_suggestion(exc.format_message()), hint)
    return code


def _one_suggestion(message: str) -> str:
    """Drop a repeated "Did you mean ...?": typer (0.2x, in the message) and a newer click
    (8.5, when formatting it) can each append the same suggestion."""
    sentences = re.split(r"(?<=[.?])\s+", message)
    seen_suggestion = False
    kept = []
    for sentence in sentences:
        if sentence.lower().startswith(("did you mean", "(did you mean")):
            if seen_suggestion:
                continue
            seen_suggestion = True
        kept.append(sentence)
    return " ".join(kept)


class Root(TyperGroup):
    """The root command. It reports an EdgeasError in `invoke`, where the context that
    parsed --debug is alive: the flag lives in that context (`ctx.obj`), not in the
    process, so one `main()` call's --debug cannot leak into another (tests, embedding
    programs). And a mistyped command gets a suggestion with every typer: older ones
    suggest nothing, newer ones do it themselves."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeasError as exc:
            debug = isinstance(ctx.obj, dict) and bool(ctx.obj.get("debug"))
            if debug or os.environ.get("EDGEAS_DEBUG") == "1":
                raise
            report(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from exc

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except Exception as exc:
            message = getattr(exc, "message", None)
            typo = args[0] if args else ""
            # Only an unknown command name (an unknown option fails here too: "-..."), and
            # only when neither typer nor click has suggested one (click does so when the
            # message is formatted).
            if (isinstance(exc, _click_classes("UsageError")) and isinstance(message, str)
                    and typo and not typo.startswith("-")
                    and "did you mean" not in exc.format_message().lower()):
                close = difflib.get_close_matches(typo, self.list_commands(ctx), n=1)
                if close:
                    exc.message = f"{message.rstrip('.')}. Did you mean '{close[0]}'?"
            raise
