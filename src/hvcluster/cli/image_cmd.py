"""``hvc image``: the test/demo guest image, built on this host from Debian packages."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from hvcluster.cli.output import friendly_errors, print_json
from hvcluster.guestimage.debian import build_debian_image, require_debian_image
from hvcluster.guestimage.image import DEFAULT_CACHE, ImageBuildFailed, build_image, cached_image

app = typer.Typer(
    help="The test/demo guest images: busybox (a Debian kernel + busybox initramfs, the fast "
    "default) or debian (a Debian 12 disk image that boots from its disk)."
)

CACHE = typer.Option(DEFAULT_CACHE, "--cache", help="Where downloads and the image are kept.")


class GuestOS(StrEnum):
    """The guest images there are (typer refuses any other ``--os`` naming it)."""

    BUSYBOX = "busybox"
    DEBIAN = "debian"


OS = typer.Option(GuestOS.BUSYBOX, "--os", help="busybox or debian.")


@app.command("build")
@friendly_errors
def build(
    cache: Path = CACHE,
    force: bool = typer.Option(False, "--force", help="Rebuild even if an image is cached."),
    os_name: GuestOS = OS,
    mirror: str = typer.Option(
        "", help="debian: the Debian mirror (default: the first one apt is configured with)."
    ),
    user: str = typer.Option("", help="debian: a user the first boot creates."),
    ssh_key: Path | None = typer.Option(
        None, "--ssh-key", help="debian: a public key file the user logs in with over SSH."
    ),
) -> None:
    """Build the guest image into the cache; does nothing if an up-to-date one is there."""
    log = lambda line: typer.echo(f"[image] {line}")  # noqa: E731
    if os_name is GuestOS.BUSYBOX:
        if mirror or user or ssh_key:
            raise typer.BadParameter(
                "only with --os debian", param_hint="--mirror/--user/--ssh-key"
            )
        build_image(cache, force=force, log=log)
        return
    key = ""
    if ssh_key is not None:
        try:
            key = ssh_key.read_text().strip()
        except OSError as e:
            raise typer.BadParameter(
                f"cannot read {ssh_key}: {e}", param_hint="--ssh-key"
            ) from None
        if not key.startswith(("ssh-", "ecdsa-", "sk-")):
            raise typer.BadParameter(f"{ssh_key} is not an SSH public key", param_hint="--ssh-key")
        if not user:
            raise typer.BadParameter("an SSH key needs a --user", param_hint="--user")
    build_debian_image(cache, force=force, log=log, mirror=mirror or None, user=user, ssh_key=key)


@app.command("show")
@friendly_errors
def show(
    cache: Path = CACHE,
    json: bool = typer.Option(False, "--json", help="Print JSON."),
    os_name: GuestOS = OS,
) -> None:
    """Where the cached guest image is, and the VM spec ``boot`` section that boots it."""
    if os_name is GuestOS.DEBIAN:
        try:
            debian = require_debian_image(cache)
        except ImageBuildFailed as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(1) from None
        info = {
            "base": str(debian.base),
            "kernel_version": debian.kernel_version,
            "mirror": debian.mirror,
            "disks": "thin qcow2 overlays: qemu-img create -f qcow2 -b BASE -F qcow2 DISK",
            "boot": debian.boot().model_dump(),
        }
        if json:
            print_json(info)
        else:
            for key, value in info.items():
                typer.echo(f"{key}: {value}")
        return
    image = cached_image(cache)
    if image is None:
        raise typer.Exit(_missing(cache))
    boot = image.boot()
    data = {
        "kernel": str(image.kernel),
        "initrd": str(image.initrd),
        "kernel_version": image.kernel_version,
        "package": image.package,
        "boot": boot.model_dump(),
    }
    if json:
        print_json(data)
    else:
        for key, value in data.items():
            typer.echo(f"{key}: {value}")


def _missing(cache: Path) -> int:
    typer.echo(f"no guest image in {cache}: run `hvc image build --cache {cache}`", err=True)
    return 1
