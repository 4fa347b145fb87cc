"""The `ae` command group: global options, configuration, and the command groups."""

from __future__ import annotations

from typing import Any

import click

from cli import reanalyze, references, samples
from cli.client import Session
from cli.config import resolve
from cli.errors import EXIT_CODES_HELP, CliError, Exit
from cli.output import echo_json, pairs

HELP = f"""Attribution Engine from the command line: submit samples, watch them, read their
results and reports, find samples, manage references and batch reanalyses.

\b
The API's address and key come from, in this order: --url/--api-key, the environment
(AE_URL, AE_API_KEY), the config file (--config, $AE_CONFIG, else
~/.config/ae/config.toml: url, api_key, model, timeout), the default
http://127.0.0.1:8000 and no key. `references` and `reanalyze` are internal operations:
they need an internal key (AE_INTERNAL_API_KEYS of the server).

{EXIT_CODES_HELP}"""


class AeGroup(click.Group):
    """Ctrl-C exits 130 with one line, not click's 'Aborted!' and 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as err:
            raise CliError("interrupted", Exit.INTERRUPTED) from err


@click.group(cls=AeGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", help="API base URL (env AE_URL).")
@click.option("--api-key", help="API key sent as 'Authorization: Bearer' (env AE_API_KEY).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML config file (env AE_CONFIG; default ~/.config/ae/config.toml).")
@click.option("--model", help="Model name (default 'FESTIVE Func Sim').")
@click.option("--timeout", type=float, help="Seconds to wait for one HTTP answer (default 60).")
@click.version_option(package_name="attribution-engine", prog_name="ae")
@click.pass_context
def ae(ctx: click.Context, url: str | None, api_key: str | None, config_file: str | None,
       model: str | None, timeout: float | None) -> None:
    session = Session(resolve(config_file, url, api_key, model, timeout))
    ctx.obj = session
    ctx.call_on_close(session.close)


@ae.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show_config(session: Session, as_json: bool) -> None:
    """Show the settings in effect and where each came from (the key is not shown)."""
    config = session.config
    key = f"set ({len(config.api_key)} characters)" if config.api_key else "none"
    settings = {"url": config.url, "api_key": key, "model": config.model,
                "timeout": config.timeout_s,
                "config_file": str(config.config_file) if config.config_file else None}
    if as_json:
        echo_json({**settings, "sources": config.sources})
        return
    click.echo(pairs([(k, f"{v}  ({config.sources.get(k, '')})" if k in config.sources else v)
                      for k, v in settings.items()]))


for command in samples.COMMANDS:
    ae.add_command(command)
ae.add_command(references.references)
ae.add_command(reanalyze.reanalyze)


def main() -> None:
    """The `ae` entry point."""
    ae(prog_name="ae")
