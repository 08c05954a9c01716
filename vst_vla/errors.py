"""How `vst-vla` reports a failure: one line on stderr, and an exit code that says whose fault it is.

Exit codes of `vst-vla <command>`:
- 0: done.
- 2: a user error, whose message is the whole story: a missing file or folder, a missing or unknown config key,
  an unknown config group option, an override that does not parse, a folder conflict, bad data rows
  (`UserError`, the stages' own `ValueError` subclasses such as `BadSampleError` or `CheckpointError`, a
  `ValueError` raised by our own validation, `FileNotFoundError`/`FileExistsError`/`PermissionError`, and the
  Hydra/OmegaConf composition errors).
- 1: an internal error (a bug, or a library failing): one line naming the exception, and how to see it all.
- 130: interrupted (Ctrl-C).

The line reads `vst-vla <command>: <what is wrong, which key or path, what to do>`. The full traceback is printed
before it only with `VST_VLA_DEBUG=1` or the Hydra override `hydra.verbose=true`.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "VST_VLA_DEBUG"
DEBUG_HINT = f"run with {DEBUG_ENV}=1 for the traceback"

_OUR_PACKAGES = frozenset({"vst_vla", "spatial_tuning", "policies", "sim"})
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off", "null", "none", "[]"})
_MAX_LINE = 1000  # a message that wraps a library's multi-page error stays one readable line


class UserError(Exception):
    """An error whose message is the whole story (what is wrong, which key or path, what to do): no traceback."""


class UnsupportedHereError(UserError, RuntimeError):
    """A configured choice this machine cannot run (flash-attention without CUDA, vLLM without a GPU)."""


def debug_requested(overrides: Sequence[str] = ()) -> bool:
    """True when `VST_VLA_DEBUG` is set (not 0/false) or the overrides hold a true `hydra.verbose`."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() not in _FALSE_WORDS:
        return True
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "hydra.verbose" and value.strip().lower() not in _FALSE_WORDS:
            return True
    return False


def one_line(text: str) -> str:
    """`text` with its lines joined by single spaces (and capped in length)."""
    line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 1] + "…"


def _defined_or_raised_by_us(exc: BaseException) -> tuple[bool, bool]:
    defined = type(exc).__module__.split(".")[0] in _OUR_PACKAGES
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    raised = tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] in _OUR_PACKAGES
    return defined, raised


def _omegaconf_line(exc: BaseException) -> str | None:
    from omegaconf.errors import (
        InterpolationResolutionError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    if not isinstance(exc, OmegaConfBaseException):
        return None
    key = getattr(exc, "full_key", None)
    if isinstance(exc, MissingMandatoryValue) and key:
        return f"{key} is required and has no value: pass {key}=VALUE on the command line"
    if isinstance(exc, (InterpolationResolutionError, ValidationError)):
        message = str(exc).splitlines()[0]  # the lines after it repeat full_key and the node type
        return message + (f" (config key {key})" if key else "")
    return None  # other OmegaConf errors (a key our code reads is absent) are bugs


def _hydra_line(exc: BaseException, command: str) -> str | None:
    from hydra.errors import (
        CompactHydraException,
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, MissingConfigException) and exc.options and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, option = exc.missing_cfg_file.rsplit("/", 1)
        return f"{group}={option} is not an option of the config group {group}: choose one of {', '.join(exc.options)}"
    if isinstance(exc, OverrideParseException):
        return (f"cannot parse the override {exc.override!r}: {one_line(exc.message)} "
                "(write key=value; quote values with spaces or special characters)")
    message = str(exc)
    if (isinstance(exc, ConfigCompositionException) and isinstance(exc.__cause__, (ConfigKeyError, ConfigAttributeError))
            and message.startswith("Could not override '")):
        key = message.split("'")[1]
        return (f"{key} is not a key of the {command} config: check its spelling (`vst-vla {command} --cfg job` "
                f"prints every key), or add a new key with +{key}=VALUE")
    if isinstance(exc, CompactHydraException):
        return one_line(message.split("\nConfig search path:")[0])
    return None


def describe(exc: BaseException, command: str) -> tuple[int, str]:
    """The exit code and the one line (without the `vst-vla <command>: ` prefix) for a failed command."""
    config_line = _omegaconf_line(exc) or _hydra_line(exc, command)
    if config_line is not None:
        return EXIT_USER_ERROR, config_line
    defined, raised = _defined_or_raised_by_us(exc)
    if isinstance(exc, (UserError, *_PATH_ERRORS)) or (isinstance(exc, ValueError) and (defined or raised)):
        return EXIT_USER_ERROR, one_line(exc) or type(exc).__name__
    return EXIT_INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {one_line(exc)} ({DEBUG_HINT})"


def report_failure(command: str, exc: BaseException, debug: bool = False) -> int:
    """Print the failure of `vst-vla <command>` (its traceback first when `debug`); return the exit code."""
    code, line = describe(exc, command)
    sys.stdout.flush()
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"vst-vla {command}: {line}", file=sys.stderr, flush=True)
    return code
