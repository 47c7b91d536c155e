"""``hvc image``: the test/demo guest image, built on this host from Debian packages."""

from __future__ import annotations

from pathlib import Path

import typer

from hvcluster.cli.output import friendly_errors, print_json
from hvcluster.guestimage.image import DEFAULT_CACHE, build_image, cached_image

app = typer.Typer(help="The test/demo guest image (a Debian kernel + busybox initramfs).")

CACHE = typer.Option(DEFAULT_CACHE, "--cache", help="Where downloads and the image are kept.")


@app.command("build")
@friendly_errors
def build(
    cache: Path = CACHE,
    force: bool = typer.Option(False, "--force", help="Rebuild even if an image is cached."),
) -> None:
    """Build the guest image into the cache; does nothing if an up-to-date one is there."""
    build_image(cache, force=force, log=lambda line: typer.echo(f"[image] {line}"))


@app.command("show")
@friendly_errors
def show(
    cache: Path = CACHE,
    json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Where the cached guest image is, and the VM spec ``boot`` section that boots it."""
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
