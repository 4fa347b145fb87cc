"""Logging for every process: plain and readable (a terminal, `make up`), or one JSON
object per line with AE_LOG_FORMAT=json.

Every line carries what it is about, when known: sha256, workflow_id, run_id, activity,
attempt (and workflow_type, task_queue). Inside an activity they come from its
Temporal info (`activity.logger` lines and any other logger's); inside a workflow from
`workflow.logger`; in the API from the request (api/metrics.py sets them). The sha256 is
the last part of an analysis or reference workflow id, or the request's path parameter.

Secrets never reach a log: the configured API keys, `Bearer` credentials and passwords
in URLs are replaced by `***` in every line (message, arguments and traceback).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from temporalio import activity
from temporalio import workflow as temporal_workflow

# Context set by the API for the request being answered (operation, sha256, request_id).
REQUEST_CONTEXT: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "ae_request_context", default=None
)
CONTEXT_FIELDS = ("sha256", "workflow_id", "run_id", "activity", "attempt", "workflow_type",
                  "task_queue", "operation", "request_id")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",;]+")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@/\s]+(@)")
MASK = "***"


def secrets_of(settings: Any) -> tuple[str, ...]:
    """The secrets a process holds (common.config.Settings), to mask wherever they appear:
    the API keys, Temporal's API key, and the AWS secret boto3 reads from the environment."""
    held = [*settings.api_keys, *settings.internal_api_keys, settings.temporal_api_key]
    found = [s.get_secret_value() if hasattr(s, "get_secret_value") else s for s in held]
    found += [os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")]
    return tuple(s for s in found if s)


def configure(service: str, level: int = logging.INFO, fmt: str | None = None,
              secrets: Iterable[str] = ()) -> None:
    """Root logging for a process: one handler on stderr, format from AE_LOG_FORMAT."""
    fmt = (fmt or os.environ.get("AE_LOG_FORMAT", "plain")).strip().lower()
    if fmt not in ("plain", "json"):
        raise ValueError(f"AE_LOG_FORMAT must be plain or json, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactSecrets(secrets))
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else PlainFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if fmt == "json":  # the ids are fields of their own: keep the messages short
        activity.logger.activity_info_on_message = False
        temporal_workflow.logger.workflow_info_on_message = False


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The Temporal or request context of a record, from its extras or the current task."""
    found: dict[str, Any] = {}
    details = getattr(record, "temporal_activity", None)
    if details is None and activity.in_activity():
        details = activity.info()._logger_details()
    if details:
        found.update(workflow_id=details.get("workflow_id"),
                     run_id=details.get("workflow_run_id"),
                     activity=details.get("activity_type"), attempt=details.get("attempt"),
                     workflow_type=details.get("workflow_type"),
                     task_queue=details.get("task_queue"))
    wf = getattr(record, "temporal_workflow", None)
    if wf:
        found.update(workflow_id=wf.get("workflow_id"), run_id=wf.get("run_id"),
                     workflow_type=wf.get("workflow_type"), task_queue=wf.get("task_queue"),
                     attempt=wf.get("attempt"))
    request = REQUEST_CONTEXT.get()
    if request:
        found.update({k: v for k, v in request.items() if v})
    workflow_id = found.get("workflow_id") or ""
    tail = workflow_id.rsplit("/", 1)[-1]
    if "sha256" not in found and _SHA256.match(tail):
        found["sha256"] = tail
    return {k: v for k, v in found.items() if v not in (None, "")}


class ContextFilter(logging.Filter):
    """Puts the context fields on the record (record.ae_context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.ae_context = context_of(record)
        return True


class RedactSecrets(logging.Filter):
    """Masks configured keys, Bearer credentials and URL passwords in the whole line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        text = _BEARER.sub(rf"\1{MASK}", text)
        return _URL_PASSWORD.sub(rf"\1{MASK}\2", text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            formatter = logging.Formatter()
            record.exc_text = self.redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self.service,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "ae_context", None) or context_of(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = getattr(record, "ae_context", None) or {}
        if not context:
            return text
        parts = []
        if "sha256" in context:
            parts.append(f"sha256={context['sha256'][:12]}")
        if "run_id" in context:
            parts.append(f"run={context['run_id']}")
        if "activity" in context:
            parts.append(f"{context['activity']}#{context.get('attempt', '')}")
        if "operation" in context:
            parts.append(f"op={context['operation']}")
        first, _, rest = text.partition("\n")
        return f"{first}  [{' '.join(parts)}]" + (f"\n{rest}" if rest else "")
