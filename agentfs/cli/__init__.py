"""The `agentfs` command line: a front end that translates, holding no rules.

Each module in this package holds one family of commands and lists them in
`COMMANDS`; they are discovered here so that families stay independent.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import click

from agentfs.errors import AgentfsError


class _Group(click.Group):
    """Turns AgentfsError into one line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except AgentfsError as e:
            click.echo(f"agentfs: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-w", "--workspace", "workspace", metavar="WS", default=None,
              help="Workspace directory (else $AGENTFS_WORKSPACE, else the mount or workspace you are in).")
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
@click.version_option(package_name="agentfs")
@click.pass_context
def main(ctx: click.Context, workspace: str | None, verbose: int) -> None:
    """agentfs: a governed workspace for teams of AI agents."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj["workspace"] = workspace


def _register() -> None:
    import agentfs.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"agentfs.cli.{info.name}")
        for cmd in getattr(mod, "COMMANDS", []):
            main.add_command(cmd)


_register()
