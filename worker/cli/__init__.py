"""The ``sessionkeeper`` command: one module per command group, registered below."""

from __future__ import annotations

import importlib

import click

from worker.cli.base import Cli, Group, set_config_path

#: module -> the command names it exports (each module defines click commands of those names)
COMMANDS: dict[str, tuple[str, ...]] = {
    "worker.cli.setup": ("migrate", "check", "profiles", "config"),
    "worker.cli.demo": ("demo",),
    "worker.cli.purge": ("purge",),
    "worker.cli.stats": ("stats",),
    "worker.cli.scan": ("scan",),
    "worker.cli.alerts": ("alerts",),
    "worker.cli.revoke": ("revoke", "job"),
    "worker.cli.runtime": ("worker", "beat", "api", "health"),
}


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    envvar="SESSIONKEEPER_CONFIG",
    help="TOML configuration file (env: SESSIONKEEPER_CONFIG).",
)
@click.version_option(package_name="sessionkeeper")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """Keep a web application's login-session table healthy.

    Purges expired sessions in gentle batches, keeps per-user and global statistics, flags
    anomalous session-creation rates, and signs users out of other devices on request.
    Every job runs once from here (cron-style, no broker needed) or on the Celery schedule.

    Exit codes: 0 ok, 1 job failed or a service unreachable, 2 bad usage or configuration.
    Settings: SESSIONKEEPER_* environment variables (nested with __) over the --config file.
    """
    set_config_path(config)
    ctx.obj = Cli(config=config)


def _register() -> None:
    for module_name, names in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        for name in names:
            command = getattr(module, f"{name}_command", None)
            if command is not None:
                main.add_command(command, name)


_register()
