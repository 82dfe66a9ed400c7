"""Values that come from the environment stay out of what a run writes.

A config may take any value from the environment with `${oc.env:NAME}` (a token
in a data path, the service's API key). Such a value is never written into an
artifact or a log: saved configs keep the `${oc.env:NAME}` text where the value
was (so a reloaded config takes it from the environment again), and log lines
show `${oc.env:NAME}` in its place. Settings that are secrets by nature (the API
key) are only taken from the environment: given on the command line they would
be saved in the run's `.hydra/` files and shown by `ps`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple
from urllib.parse import quote, quote_plus

from omegaconf import DictConfig, OmegaConf

from modelsphere.core.errors import ModelSphereError

ENV_REFERENCE = re.compile(r"\$\{oc\.env:\s*([A-Za-z_][A-Za-z0-9_]*)")
SINGLE_ENV_REFERENCE = re.compile(r"\$\{oc\.env:[^${}]*\}")
# Shorter values ("1", "cpu", a seed) are left in free text and in the strings
# of written files: replacing every occurrence would garble numbers, hashes and
# words (secrets are longer: an API key has at least 8 characters). Saved
# configs keep the interpolation of a setting set from the environment whatever
# its length.
MIN_REDACTED_CHARS = 8
# Settings that become names on disk or on the wire: no environment value in them.
NAME_KEYS = ("data.name", "serve.model_name")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _written_forms(value: str) -> List[str]:
    """`value` and its percent-encoded forms (upper and lower case hex), longest
    first."""
    encoded = {quote(value, safe=""), quote(value), quote_plus(value)}
    forms = {value} | encoded | {_lower_hex(form) for form in encoded}
    return sorted(forms, key=len, reverse=True)


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


@dataclass
class EnvironmentValues:
    """The values of the environment variables a config refers to, by name."""

    values: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: Any) -> "EnvironmentValues":
        if not OmegaConf.is_config(cfg):
            return cls()
        root = cfg._get_root()
        raw = OmegaConf.to_container(root, resolve=False)
        names = {m for text in _strings(raw) for m in ENV_REFERENCE.findall(text)}
        return cls.named(names)

    @classmethod
    def named(cls, names: Iterable[str]) -> "EnvironmentValues":
        """The values of the variables `names` that are set (a spawned worker
        knows the names only; it inherits the environment)."""
        values = {name: os.environ.get(name, "") for name in sorted(names)}
        return cls({name: value for name, value in values.items() if value})

    def _found_in(self, text: str) -> List[str]:
        return [name for name, value in self.values.items() if value in text]

    def redact_text(self, text: str) -> str:
        """`text` with each value replaced by `${oc.env:NAME}` (longest first),
        as it is and as a URL would carry it (percent-encoded: an access log
        records a query string as the client sent it)."""
        for name in sorted(self.values, key=lambda n: -len(self.values[n])):
            value = self.values[name]
            if len(value) >= MIN_REDACTED_CHARS:
                for form in _written_forms(value):
                    text = text.replace(form, "${oc.env:%s}" % name)
        return text

    def redact(self, value: Any) -> Any:
        """A JSON-able structure with the values replaced in every string."""
        if not self.values:
            return value
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {key: self.redact(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact(item) for item in value]
        return value

    def refuse_in_names(self, cfg: DictConfig, keys: Iterable[str] = NAME_KEYS):
        """A name derived from an environment value would carry it into folder
        names, artifacts and URLs."""
        if not OmegaConf.is_config(cfg):
            return
        for key in keys:
            name = OmegaConf.select(cfg, key, default=None)
            found = self._found_in(name) if isinstance(name, str) else []
            if found:
                raise ModelSphereError(
                    f"{key} would contain the value of ${{oc.env:{found[0]}}} "
                    f"(an environment value is never written into names): "
                    f"set {key}=<a name> explicitly"
                )


def saved_config(cfg: DictConfig, env: Optional[EnvironmentValues] = None) -> Any:
    """The resolved config as plain data for a run's files, except that a value
    taken from the environment is saved as the interpolation that gave it."""
    env = env if env is not None else EnvironmentValues.of(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    if not env.values:
        return resolved
    raw = OmegaConf.to_container(cfg, resolve=False)

    def merge(value: Any, unresolved: Any) -> Any:
        if isinstance(value, dict) and isinstance(unresolved, dict):
            return {k: merge(v, unresolved.get(k)) for k, v in value.items()}
        if isinstance(value, list) and isinstance(unresolved, list):
            if len(value) == len(unresolved):
                return [merge(v, u) for v, u in zip(value, unresolved)]
        if isinstance(value, (dict, list)):
            return env.redact(value)
        if (
            isinstance(value, str)
            and isinstance(unresolved, str)
            and SINGLE_ENV_REFERENCE.fullmatch(unresolved)
        ):
            return unresolved  # the setting is the environment value itself
        if (
            isinstance(value, str)
            and isinstance(unresolved, str)
            and "${" in unresolved
        ):
            return env.redact_text(value)  # built from it: the value replaced
        return value

    return merge(resolved, raw)


def saved_config_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(saved_config(cfg)))


_ACTIVE = EnvironmentValues()


def activate(env: EnvironmentValues) -> None:
    """The values this process must not write (set by the entry point); every
    file written through `core.fileio` has them replaced."""
    global _ACTIVE
    _ACTIVE = env


def redact_written(text: str) -> str:
    return _ACTIVE.redact_text(text) if _ACTIVE.values else text


def redact_written_data(value: Any) -> Any:
    """A JSON-able payload with the values replaced in its string values (not
    in its keys, numbers or the text around them)."""
    return _ACTIVE.redact(value) if _ACTIVE.values else value


class RedactingFilter(logging.Filter):
    """Replaces the active environment values (`activate`) in every record a
    handler emits: its message, its arguments one by one (formatters such as
    uvicorn's access log read them), its traceback and its stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _ACTIVE.values:
            return True
        redact = _ACTIVE.redact_text
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact(a) if isinstance(a, str) else a for a in record.args
            )
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(a) if isinstance(a, str) else a
                for k, a in record.args.items()
            }
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad record is the handler's to report
            message = None
        if message is not None and redact(message) != message:
            # a value spread over the arguments, or inside one that is not a str
            record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            # formatted here (as logging.Formatter does) so it can be redacted;
            # a handler's own formatException is not used for it
            record.exc_text = _TRACEBACK_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_TRACEBACK_FORMATTER = logging.Formatter()


def _handlers() -> Iterator[logging.Handler]:
    """The handlers of the root logger and of every named logger (uvicorn's
    own do not propagate to the root)."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        yield from logger.handlers


def redact_logs() -> List[Tuple[logging.Handler, RedactingFilter]]:
    """Install the filter on every handler that has none yet (console, the run's
    log, uvicorn's); returns what was installed. Call it again after a library
    configures its logging."""
    installed = []
    for handler in _handlers():
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            log_filter = RedactingFilter()
            handler.addFilter(log_filter)
            installed.append((handler, log_filter))
    return installed


def remove_filters(installed: List[Tuple[logging.Handler, RedactingFilter]]) -> None:
    for handler, log_filter in installed:
        handler.removeFilter(log_filter)
