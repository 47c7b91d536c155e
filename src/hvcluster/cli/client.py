"""A small HTTP client of the hvcluster API, for the CLI.

Where the API is, which token to send and which CA to trust are each found in this order:

1. the options: ``--api URL`` (repeatable, or comma-separated), ``hvc --token T``,
   ``hvc --ca FILE``;
2. the environment: ``HVC_API`` (comma-separated), ``HVC_TOKEN``, ``HVC_CA``;
3. the config file, ``$HVC_CONFIG`` or ``~/.config/hvc/config.toml``, keys ``api`` (a URL or
   a list), ``token`` and ``ca``;
4. the running lab's state file (``$HVC_LAB_DIR/lab.json``, default
   ``/run/hvc-lab/lab.json``, keys ``"api"``: a list of base URLs, ``"token"``, ``"ca"``);
   its token and CA only for the lab's own URLs (its admin token goes nowhere else).

With several URLs, the first that answers ``/healthz`` quickly is used (a hung agent accepts
connections but never answers); a write is only retried on another URL when it could not
connect (so it was never sent), a read also when it timed out (see :class:`Client`).

An https API's certificate is checked against the CA found as above, else the system's CAs.

Errors come back as :class:`ApiError` (an :class:`HvcError`), one sentence each, which the
CLI prints without a traceback.
"""

from __future__ import annotations

import json
import os
import ssl
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hvcluster.models.errors import HvcError

LAB_DIR = Path("/run/hvc-lab")
LAB_FILE = "lab.json"
CONFIG_FILE = Path("~/.config/hvc/config.toml")
CONFIG_KEYS = ("api", "token", "ca")
PREFIX = "/api/v1"
TIMEOUT_S = 5.0
# How long an agent has to answer /healthz before the next is tried (see Client): long
# enough for a loaded but working agent, short enough that a hung one costs little.
PROBE_TIMEOUT_S = 0.75


class ApiError(HvcError):
    """The API refused a request (``status``: its HTTP status), or could not be reached
    (``unreachable``), or the CLI could not even ask (status 0: a bad config file)."""

    unreachable = False
    usage = False

    def __init__(self, message: str, status: int = 0, field: str | None = None) -> None:
        self.status, self.field = status, field
        super().__init__(message)


class UsageError(ApiError):
    """The CLI cannot ask as it was told or configured: no API named, a config file or CA
    file that cannot be read."""

    usage = True


class Unreachable(ApiError):
    """No API answered: refused, timed out, or its certificate is not trusted."""

    unreachable = True


def _split(value: str) -> list[str]:
    return [u.strip().rstrip("/") for u in value.split(",") if u.strip()]


def lab_file(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get("HVC_LAB_DIR") or LAB_DIR) / LAB_FILE


def config_file(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get("HVC_CONFIG") or CONFIG_FILE).expanduser()


def read_config(path: Path, required: bool = False) -> dict[str, Any]:
    """The CLI's config file (``api``, ``token``, ``ca``); {} when there is none (an error
    if ``required``: it was named explicitly)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise UsageError(f"the config file {path} ($HVC_CONFIG) does not exist") from None
        return {}
    except OSError as e:
        raise UsageError(f"cannot read the config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"the config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(unknown)} (known: api, token, ca)")
    api = data.get("api")
    if api is not None and not (
        isinstance(api, str) or (isinstance(api, list) and all(isinstance(u, str) for u in api))
    ):
        raise UsageError(f"{path}: api must be a URL or a list of URLs")
    for key in ("token", "ca"):
        if key in data and not isinstance(data[key], str):
            raise UsageError(f"{path}: {key} must be a string")
    return data


def _read_lab(path: Path) -> dict[str, Any] | str | None:
    """The lab's state, None if there is no lab, or why it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return f"cannot read the lab state file {path}: {e}"
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Connection:
    """Where the API is, which token to send (None: none), which CA file to trust."""

    urls: tuple[str, ...]
    token: str | None = None
    ca: str | None = None


def resolve(
    api: Sequence[str] | None = None,
    token: str | None = None,
    ca: str | None = None,
    env: Mapping[str, str] = os.environ,
    lab: Path | None = None,
) -> Connection:
    """Each of URLs, token and CA from the options, the environment, the config file or
    the lab's state file, whichever names it first."""
    config = read_config(config_file(env), required=bool(env.get("HVC_CONFIG")))
    lab_path = lab if lab is not None else lab_file(env)
    lab_data = _read_lab(lab_path)
    urls = tuple(_urls(api, env, config, lab_data, lab_path))
    lab_dict = lab_data if isinstance(lab_data, dict) else None
    if lab_dict is not None and not set(urls) <= _lab_urls(lab_dict):
        lab_dict = None  # the lab's token goes to the lab's agents only
    return Connection(
        urls=urls,
        token=_first(token, env.get("HVC_TOKEN"), config.get("token"), lab_dict, "token"),
        ca=_first(ca, env.get("HVC_CA"), config.get("ca"), lab_dict, "ca"),
    )


def _lab_urls(lab: dict[str, Any]) -> set[str]:
    urls = lab.get("api")
    return {u.rstrip("/") for u in urls if isinstance(u, str)} if isinstance(urls, list) else set()


def _first(
    option: str | None,
    environ: str | None,
    configured: str | None,
    lab: dict[str, Any] | None,
    key: str,
) -> str | None:
    for value in (option, environ, configured, (lab or {}).get(key)):
        if isinstance(value, str) and value:
            return value
    return None


def _urls(
    api: Sequence[str] | None,
    env: Mapping[str, str],
    config: Mapping[str, Any],
    lab: dict[str, Any] | str | None,
    path: Path,
) -> list[str]:
    if api:
        return [u for item in api for u in _split(item)]
    if env.get("HVC_API"):
        return _split(env["HVC_API"])
    configured = config.get("api")
    if configured:
        items = [configured] if isinstance(configured, str) else configured
        return [u for item in items for u in _split(item)]
    if lab is None:
        raise UsageError(
            f"no API given and no lab running ({path} not found): pass --api URL, "
            'set HVC_API, write api = "URL" in ~/.config/hvc/config.toml, or start a lab '
            "with 'hvc lab up'"
        )
    if isinstance(lab, str):
        raise UsageError(lab)
    urls = lab.get("api")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise UsageError(f"{path} lists no API URLs (key 'api'): pass --api URL or set HVC_API")
    return [u.rstrip("/") for u in urls]


def resolve_urls(
    api: Sequence[str] | None,
    env: Mapping[str, str] = os.environ,
    lab: Path | None = None,
) -> list[str]:
    """The base URLs to try (see :func:`resolve`)."""
    return list(resolve(api, env=env, lab=lab).urls)


@dataclass
class GlobalOptions:
    """``hvc --token T --ca FILE ...``: set by the root command, read by every client."""

    token: str | None = None
    ca: str | None = None


given = GlobalOptions()


def tls_context(ca: str | None) -> ssl.SSLContext:
    """What httpx's ``verify=`` gets: the system's CAs, or only ``ca``."""
    try:
        return ssl.create_default_context(cafile=ca)
    except OSError as e:
        raise UsageError(f"cannot read the CA file {ca} (HVC_CA): {e.strerror or e}") from None


def _error_of(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        field = body.get("field")
        return ApiError(
            body["error"], response.status_code, field if isinstance(field, str) else None
        )
    text = response.text.strip().splitlines()[0] if response.text.strip() else ""
    return ApiError(
        f"HTTP {response.status_code} from {response.url}: {text}"[:300], response.status_code
    )


class Client:
    """Sync client of one cluster's API, given several agents' URLs.

    **Which agent.** With more than one URL, the client first picks a live one: it asks each
    in turn for ``/healthz`` with a short timeout (:data:`PROBE_TIMEOUT_S`) and keeps the
    first that answers 200 for every request it makes. A hung agent (SIGSTOPped, or its host
    frozen) still accepts TCP connections, since the kernel completes them, but never
    answers: without the probe a request would wait out the full timeout there. An agent
    whose etcd is out answers 503 and is passed over too (it could not serve).

    **Writes are sent once.** A request that reached an agent's socket runs when that agent
    resumes, even if we gave up on it, so a write is never sent to a second agent after a
    timeout (it might be done twice: a VM created twice is refused, but a move or a config
    change would be asked twice). A write goes to the agent the probe found live, a moment
    before, and moves on to the next only when it could not connect at all (refused, no
    route: nothing was sent). If it then times out, the error says it may or may not have
    been done. Reads are safe to repeat: one that times out goes to the next agent.

    When no agent answers the probe in time (all slow, not hung), each is asked anyway with
    the full timeout, in order, as above."""

    def __init__(
        self,
        urls: Sequence[str],
        timeout: float = TIMEOUT_S,
        token: str | None = None,
        ca: str | None = None,
        probe_timeout: float = PROBE_TIMEOUT_S,
    ) -> None:
        """``ca``: the CA file to check an https API against (None: the system's CAs)."""
        if not urls:
            raise UsageError("no API URL to talk to")
        self.urls = list(urls)
        self.probe_timeout = probe_timeout
        self.live: str | None = None  # the agent chosen, once one answered
        self._probed = False
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(timeout=timeout, headers=headers, verify=tls_context(ca))

    @classmethod
    def from_options(cls, api: Sequence[str] | None, timeout: float = TIMEOUT_S) -> Client:
        found = resolve(api, given.token, given.ca)
        return cls(found.urls, timeout, token=found.token, ca=found.ca)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, errors: list[str]) -> ApiError:
        return Unreachable("cannot reach the hvcluster API: " + "; ".join(errors))

    def _healthy(self, base: str) -> str | None:
        """None if ``base`` answers ``/healthz`` with 200 within the probe timeout, else why
        not."""
        try:
            response = self._http.get(base + PREFIX + "/healthz", timeout=self.probe_timeout)
        except httpx.ConnectError as e:
            return _why(e)
        except httpx.TimeoutException:
            return f"did not answer within {self.probe_timeout:g}s (hung?)"
        except httpx.HTTPError as e:
            return str(e) or type(e).__name__
        if response.status_code != 200:
            return _error_of(response).args[0] if response.is_error else "not healthy"
        return None

    def _candidates(self, errors: list[str]) -> list[str]:
        """The URLs to try, best first: the live agent (found by the probe, once per client)
        and then the others in order; with one URL, just it (there is no other to choose)."""
        if len(self.urls) == 1:
            return list(self.urls)
        if not self._probed:
            self._probed = True
            for base in self.urls:
                why = self._healthy(base)
                if why is None:
                    self.live = base
                    break
                errors.append(f"{base}: {why}")
        if self.live is None:
            return list(self.urls)
        return [self.live] + [u for u in self.urls if u != self.live]

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send a request; return the decoded JSON body or raise :class:`ApiError`. See the
        class docstring for which agent gets it, and when another is tried."""
        errors: list[str] = []
        read = method in ("GET", "HEAD")
        for base in self._candidates(errors):
            url = base + PREFIX + path
            try:
                response = self._http.request(method, url, json=json_body, params=params)
            except httpx.ConnectError as e:
                errors.append(f"{base}: {_why(e)}")
                continue  # never sent: another agent may take it
            except httpx.TimeoutException:
                if read:  # safe to ask the next agent (this one may be hung)
                    errors.append(f"{base}: did not answer in time")
                    continue
                raise Unreachable(
                    f"{base} did not answer in time ({method} {path}): it may or may not "
                    "have been done; look before trying again"
                ) from None
            except httpx.HTTPError as e:
                raise Unreachable(f"{base}: {e}") from None
            self.live = base
            if response.is_error:
                raise _error_of(response)
            try:
                return response.json()
            except ValueError:
                raise ApiError(f"{base} answered {method} {path} with something not JSON") from None
        raise self._unreachable(errors)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json_body=body)

    def patch(self, path: str, body: Any = None) -> Any:
        return self.request("PATCH", path, json_body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def follow(self, path: str, **params: Any) -> Iterator[tuple[str, Any]]:
        """Server-Sent Events from ``path``: yield ``(event, data)`` for each message; end
        when the server ends the stream."""
        errors: list[str] = []
        query = {k: v for k, v in params.items() if v is not None}
        for base in self._candidates(errors):
            url = base + PREFIX + path
            try:
                with self._http.stream(
                    "GET", url, params=query, timeout=httpx.Timeout(TIMEOUT_S, read=None)
                ) as response:
                    if response.is_error:
                        response.read()
                        raise _error_of(response)
                    yield from _sse(response.iter_lines())
                    return
            except httpx.ConnectError as e:
                errors.append(f"{base}: {_why(e)}")
                continue
            except httpx.HTTPError as e:
                raise ApiError(f"{base}: the event stream broke: {e}") from None
        raise self._unreachable(errors)


def _why(error: httpx.ConnectError) -> str:
    text = str(error)
    if "refused" in text.lower():
        return "connection refused (is an agent running there?)"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"its TLS certificate is not trusted: set HVC_CA to the cluster's CA file ({text})"
    return text or type(error).__name__


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """Parse a text/event-stream: ``event:`` and ``data:`` lines, a blank line ends one."""
    event = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        # ":" comments (heartbeats) and "id:" lines need nothing here


def api_option() -> Any:
    """The ``--api`` option every command that talks to the API takes."""
    import typer  # the client itself needs no Typer; only the commands' option does

    return typer.Option(
        None,
        "--api",
        help="API base URL (repeatable or comma-separated); default: $HVC_API, else the "
        "running lab's state file.",
        show_default=False,
    )
