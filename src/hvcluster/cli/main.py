"""``hvc``: the command line. Sub-commands live in modules named for what they manage."""

from __future__ import annotations

import typer

from hvcluster import __version__
from hvcluster.cli import (
    balance_cmd,
    checkpoint_cmd,
    client,
    cluster_cmd,
    config_cmd,
    console_cmd,
    events_cmd,
    image_cmd,
    init_cmd,
    join_cmd,
    lab_cmd,
    move_cmd,
    node_cmd,
    store_cmd,
    switch_cmd,
    token_cmd,
    vm_cmd,
    vm_set_cmd,
    volume_cmd,
)
from hvcluster.cli.output import EXIT_CODES_HELP, follow_columns


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hvc {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="hvc",
    help="hvcluster: a failover cluster for QEMU/KVM virtual machines.",
    epilog=EXIT_CODES_HELP + " Where the API is: --api, $HVC_API, the config file ($HVC_CONFIG or "
    "~/.config/hvc/config.toml: api, token, ca), else the running lab.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        help="API token; default: $HVC_TOKEN, the config file ($HVC_CONFIG or "
        "~/.config/hvc/config.toml), else the running lab's.",
        show_default=False,
    ),
    ca: str | None = typer.Option(
        None,
        "--ca",
        help="CA certificate file to verify the API with; default: $HVC_CA, the config "
        "file, else the running lab's.",
        show_default=False,
    ),
) -> None:
    """hvcluster: a failover cluster for QEMU/KVM virtual machines."""
    client.given.token, client.given.ca = token, ca
    follow_columns()


vm_cmd.app.command("move")(move_cmd.move)
node_cmd.app.command("join")(join_cmd.join)
node_cmd.app.command("evict")(join_cmd.evict)
cluster_cmd.app.command("join-token")(join_cmd.join_token)
cluster_cmd.app.command("init")(init_cmd.init)
cluster_cmd.app.command("balance")(balance_cmd.balance)
cluster_cmd.app.command("capacity")(balance_cmd.capacity)
vm_cmd.app.command("console")(console_cmd.console)
vm_cmd.app.command("set")(vm_set_cmd.set_vm)
vm_cmd.app.add_typer(checkpoint_cmd.app, name="checkpoint")
app.add_typer(vm_cmd.app, name="vm")
app.add_typer(move_cmd.app, name="migration")
app.add_typer(node_cmd.app, name="node")
events_cmd.register(app)
app.add_typer(image_cmd.app, name="image")
app.add_typer(lab_cmd.app, name="lab")
app.add_typer(store_cmd.app, name="store")
app.add_typer(volume_cmd.app, name="volume")
app.add_typer(switch_cmd.app, name="switch")
cluster_cmd.app.add_typer(config_cmd.app, name="config")
app.add_typer(cluster_cmd.app, name="cluster")
app.add_typer(token_cmd.app, name="token")
