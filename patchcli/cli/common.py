"""What every subcommand shares: error handling, option parsing, messages."""

from __future__ import annotations

import functools
import os
import shlex
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

from ..errors import PatchcliError, PatchcliWarning


class PatchcliGroup(click.Group):
    """Lists commands in the order they were added (samplers first)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, PatchcliWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_command(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line messages and exit status 1.

    With ``--debug`` the full traceback is shown instead.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        previous = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            return function(*args, **kwargs)
        except PatchcliError as error:
            if debug:
                raise
            click.echo(f"Error: {error}", err=True)
            kept = getattr(error, "kept_partial", None)
            if kept is not None:
                click.echo(
                    f"note: {kept.done} of {kept.total} subjects were complete and are kept in "
                    f"{kept.path}; once the cause is fixed, rerun with --resume to continue "
                    "(or --overwrite to start again)",
                    err=True,
                )
            sys.exit(1)
        except BrokenPipeError:
            # The reader of our output went away (`patchcli memory ... | head`): stop quietly.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (no flush error at exit)
            sys.exit(0)
        except OSError as error:
            if debug:
                raise
            where = f"{error.filename}: " if error.filename else ""
            click.echo(f"Error: {where}{error.strerror or error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as error:
            # SIGINT, or SIGTERM (patchcli.signals.Interrupted): a scheduler's time limit.
            name = getattr(error, "signal_name", "SIGINT")
            kept = getattr(error, "kept_partial", None)
            if kept is None:
                click.echo(f"Interrupted ({name}); nothing was written.", err=True)
            else:
                click.echo(
                    f"Interrupted ({name}): {kept.done} of {kept.total} subjects complete, kept "
                    f"in {kept.path}; resume with: {resume_command()}",
                    err=True,
                )
            sys.exit(getattr(error, "exit_status", 130))
        finally:
            warnings.showwarning = previous

    return click.option("--debug", is_flag=True, help="Show the full traceback of an error.")(
        wrapper
    )


def resume_command() -> str:
    """The command line that was run, with ``--resume`` instead of ``--overwrite``."""
    arguments = [arg for arg in sys.argv[1:] if arg != "--overwrite"]
    if "--resume" not in arguments:
        arguments.append("--resume")
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if program not in ("patchcli", "__main__.py"):  # called from Python, not the shell
        context = click.get_current_context(silent=True)
        return f"{context.command_path if context else 'patchcli'} ... --resume"
    return shlex.join(["patchcli", *arguments])


class TripletType(click.ParamType):
    """``64`` or ``64,64,32``."""

    name = "N|X,Y,Z"

    def convert(self, value: Any, param, ctx) -> Any:
        if isinstance(value, (int, list, tuple)):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            self.fail(f"{value!r} is not an int or three comma-separated ints", param, ctx)
        if len(numbers) == 1:
            return numbers[0]
        if len(numbers) != 3:
            self.fail(f"{value!r} must have 1 or 3 values", param, ctx)
        return numbers


class ProbabilitiesType(click.ParamType):
    """``0:1,1:2`` -> ``{0: 1.0, 1: 2.0}``."""

    name = "LABEL:P,...|none"

    def convert(self, value: Any, param, ctx) -> Any:
        if isinstance(value, dict):
            return value
        reset = _reset_if_null(value)
        if reset is not None:
            return reset
        result = {}
        for item in str(value).split(","):
            key, sep, probability = item.partition(":")
            try:
                if not sep:
                    raise ValueError
                result[int(key)] = float(probability)
            except ValueError:
                self.fail(f"{value!r}: expected LABEL:PROBABILITY pairs, e.g. 0:1,1:2", param, ctx)
        return result


NULL_WORDS = ("none", "null")


def _reset_if_null(value: Any) -> Any:
    """``none`` or ``null`` on the command line sets the key to null."""
    from ..config import RESET

    if isinstance(value, str) and value.strip().lower() in NULL_WORDS:
        return RESET
    return None


class DtypeType(click.ParamType):
    """A numeric numpy dtype name, or (with ``nullable``) ``none`` to set the key to null."""

    name = "DTYPE"

    def __init__(self, nullable: bool = False) -> None:
        self.nullable = nullable
        if nullable:
            self.name = "DTYPE|none"

    def convert(self, value: Any, param, ctx) -> Any:
        from ..config import check_dtype

        reset = _reset_if_null(value) if self.nullable else None
        if reset is not None:
            return reset
        try:
            return check_dtype(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


class PaddingModeType(click.ParamType):
    """A number (constant padding), a mode name, or ``none`` for no padding."""

    name = "MODE|NUMBER|none"

    def convert(self, value: Any, param, ctx) -> Any:
        reset = _reset_if_null(value)
        if reset is not None:
            return reset
        try:
            return float(value)
        except (TypeError, ValueError):
            return value


def show_progress(quiet: bool) -> bool | None:
    """None lets tqdm decide (a bar on a terminal only); False when quiet."""
    return False if quiet else None


# An option that overrides a config key: (option name, config key, click keyword arguments).
ConfigOption = tuple[str, str, dict[str, Any]]


def with_config_options(options: list[ConfigOption]) -> Callable[[Callable], Callable]:
    """Add an option per config key (all default to None: "not given")."""

    def decorate(function: Callable) -> Callable:
        for option, _, kwargs in reversed(options):
            function = click.option(option, default=None, **kwargs)(function)
        return function

    return decorate


def config_overrides(options: list[ConfigOption], values: dict[str, Any]) -> dict[str, Any]:
    """Config key -> value of the options among ``values`` (popped from it)."""
    overrides = {}
    for option, key, _ in options:
        name = option.split("/")[0].lstrip("-").replace("-", "_")
        overrides[key] = values.pop(name, None)
    return overrides
