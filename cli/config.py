"""Where the API is and which key to send: flags, then the environment, then the config file.

The config file is TOML: $AE_CONFIG, else $XDG_CONFIG_HOME/ae/config.toml (by default
~/.config/ae/config.toml). Every key is optional:

    url = "http://127.0.0.1:8000"
    api_key = "..."
    model = "FESTIVE Func Sim"
    timeout = 60
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.errors import CliError, Exit
from common.contracts import MODEL_NAME

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0
KEYS: dict[str, type | tuple[type, ...]] = {"url": str, "api_key": str, "model": str,
                                            "timeout": (int, float)}


@dataclass(frozen=True)
class Config:
    url: str = DEFAULT_URL
    api_key: str = ""
    model: str = MODEL_NAME
    timeout_s: float = DEFAULT_TIMEOUT_S
    config_file: Path | None = None  # the file read, if any
    sources: dict[str, str] = field(default_factory=dict)  # setting -> flag/env/file/default


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ae" / "config.toml"


def read_file(path: Path, required: bool) -> dict[str, Any]:
    """The file's settings; {} if it is the default path and absent."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as err:
        if required:
            raise CliError(f"config file {path} does not exist", Exit.USAGE) from err
        return {}
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise CliError(f"config file {path}: {err}", Exit.USAGE) from err
    for key, value in data.items():
        if key not in KEYS:
            raise CliError(f"config file {path}: unknown key {key!r} (known: "
                           f"{', '.join(KEYS)})", Exit.USAGE)
        if not isinstance(value, KEYS[key]) or isinstance(value, bool):
            raise CliError(f"config file {path}: {key} has the wrong type", Exit.USAGE)
    return data


def resolve(config_flag: str | None, url: str | None, api_key: str | None,
            model: str | None, timeout_s: float | None) -> Config:
    """Each setting from the first that has it: flag, environment, config file, default."""
    named = config_flag or os.environ.get("AE_CONFIG")
    path = Path(named).expanduser() if named else default_path()
    from_file = read_file(path, required=bool(named))
    env = {"url": os.environ.get("AE_URL"), "api_key": os.environ.get("AE_API_KEY"),
           "model": None, "timeout": None}
    flags = {"url": url, "api_key": api_key, "model": model, "timeout": timeout_s}
    defaults = {"url": DEFAULT_URL, "api_key": "", "model": MODEL_NAME,
                "timeout": DEFAULT_TIMEOUT_S}
    chosen: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        for source, values in (("flag", flags), ("environment", env), (str(path), from_file),
                               ("default", defaults)):
            if values.get(key) not in (None, ""):
                chosen[key], sources[key] = values[key], source
                break
        else:
            chosen[key], sources[key] = defaults[key], "default"
    if float(chosen["timeout"]) <= 0:
        raise CliError("timeout must be positive", Exit.USAGE)
    return Config(url=str(chosen["url"]).rstrip("/"), api_key=str(chosen["api_key"]),
                  model=str(chosen["model"]), timeout_s=float(chosen["timeout"]),
                  config_file=path if from_file else None, sources=sources)
