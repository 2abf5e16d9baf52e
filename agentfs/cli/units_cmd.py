"""`agentfs install-units`: put the systemd units in place."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click

from agentfs.cli._common import echo_json
from agentfs.errors import AgentfsError

UNITS = ("agentfs@.service", "agentfs-index@.service")


def unit_sources() -> Path:
    """Where the unit files are: installed data files, else the source checkout."""
    for d in (Path(sys.prefix) / "share" / "agentfs" / "systemd", Path(__file__).resolve().parents[2] / "systemd"):
        if all((d / u).is_file() for u in UNITS):
            return d
    raise AgentfsError("the systemd unit files are missing from this installation: reinstall agentfs")


@click.command("install-units")
@click.option("--dest", default="/etc/systemd/system", show_default=True, type=click.Path(file_okay=False),
              help="Directory to install the units into.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the files installed, whether systemd reloaded.")
def install_units_cmd(dest: str, as_json: bool) -> None:
    """Install agentfs@.service and agentfs-index@.service.

    Layout: workspace /srv/agentfs/NAME, mountpoint /mnt/agentfs/NAME. Then:
    `systemctl enable --now agentfs@NAME agentfs-index@NAME`.
    """
    src = unit_sources()
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    for u in UNITS:
        shutil.copyfile(src / u, target / u)
    reloaded = Path("/run/systemd/system").is_dir() and dest == "/etc/systemd/system"
    if reloaded:
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    if as_json:
        echo_json({"installed": [str(target / u) for u in UNITS], "systemd_reloaded": reloaded})
        return
    for u in UNITS:
        click.echo(f"installed {target / u}")
    if reloaded:
        click.echo("systemd reloaded")
    click.echo("next: agentfs init /srv/agentfs/NAME && systemctl enable --now agentfs@NAME agentfs-index@NAME")


COMMANDS = [install_units_cmd]
