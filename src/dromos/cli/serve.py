"""``dromos serve MODULE:APP``: the HTTP gateway on uvicorn.

Without API keys anyone who can connect may do anything, so the gateway then listens on the
loopback address only and refuses another ``--host`` until keys are set (``--api-keys`` or
``$DROMOS_API_KEYS``). It says at start which of the two it is.
"""

from __future__ import annotations

import ipaddress

import click

from dromos.cli._load import load_app
from dromos.errors import ConfigurationError

__all__ = ["is_loopback", "serve"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--api-keys",
    default=None,
    help="key1:enqueue+read,key2:admin (env DROMOS_API_KEYS, which wins). "
    "Scopes: read, enqueue, admin; a bare key is admin.",
)
@click.option("--rate-limit", default=None, help="Per key or client, e.g. 100/s or 6000/min.")
@click.option("--max-body-size", default=1 << 20, show_default=True, help="Bytes (413 past it).")
@click.option("--max-wait", default=60, show_default=True, help="Cap on Prefer: wait=N, seconds.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))  # fmt: skip
def serve(
    app_path: str,
    host: str,
    port: int,
    api_keys: str | None,
    rate_limit: str | None,
    max_body_size: int,
    max_wait: int,
    log_level: str,
) -> None:
    """Serve MODULE:APP over HTTP: /v1 routes, OpenAPI at /openapi.json, docs at /docs."""
    try:
        import uvicorn

        from dromos.http import gateway
    except ImportError as exc:
        raise ConfigurationError(
            f"dromos serve needs the HTTP extra: pip install 'dromos[http]' ({exc})"
        ) from None
    from dromos._loop import loop_factory

    app = load_app(app_path)
    api = gateway(app, api_keys=api_keys, rate_limit=rate_limit, max_body_size=max_body_size,
                  max_wait=max_wait)  # fmt: skip
    keys = len(api.settings.keys)
    if not keys and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {host} without API keys: anyone who can reach it could "
            "enqueue and cancel jobs. Set --api-keys or DROMOS_API_KEYS (e.g. "
            "'<key>:enqueue+read,<key>:admin'), or listen on 127.0.0.1"
        )
    where = f"http://{host}:{port}"
    access = (
        f"{keys} API key(s) required"
        if keys
        else "no API keys: open to this machine only (127.0.0.1)"
    )
    click.echo(f"dromos gateway for {app.name} on {where} (docs: {where}/docs); {access}", err=True)
    # uvloop when dromos would use it (DROMOS_UVLOOP=0 turns it off), as for the worker.
    uses_uvloop = loop_factory().__module__.startswith("uvloop")
    uvicorn.run(
        api,
        host=host,
        port=port,
        log_level=log_level,
        loop="uvloop" if uses_uvloop else "asyncio",
        proxy_headers=True,
        # Open event streams of long jobs must not hold a shutdown for ever.
        timeout_graceful_shutdown=10,
    )
