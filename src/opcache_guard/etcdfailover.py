"""Send one etcd request to the first endpoint that accepts the connection.

The conftool load balancer and the etcd slot store both take a list of endpoints and try
them in order. Only a failure to connect moves on to the next endpoint; an error etcd
returns is final, because another member of the same cluster would return it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from etcd3gw import exceptions as etcd_errors

from opcache_guard.errors import GuardError

Client = TypeVar("Client")
Result = TypeVar("Result")


def call_first_reachable(endpoints: Sequence[tuple[str, Client]],
                         request: Callable[[Client], Result], error: type[GuardError],
                         what: str, hint: str) -> Result:
    """Run request on the first endpoint that can be reached and return its result.

    Arguments:
        endpoints: (URL, client) pairs, tried in order.
        request: the call to make with one client.
        error: the exception class to raise.
        what: the request as errors name it, for example "for conftool key /a/b".
        hint: what the operator should check when no endpoint is reachable.

    Raises:
        error: etcd returned an error, or no endpoint could be reached.
    """
    failures = []
    for url, client in endpoints:
        try:
            return request(client)
        except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError) as exc:
            failures.append(f"{url}: {exc}")
        except etcd_errors.Etcd3Exception as exc:
            detail = getattr(exc, "detail_text", None) or exc
            raise error(f"etcd at {url} failed {what}: {detail}") from exc
    raise error(f"no etcd endpoint responded {what}: {'; '.join(failures)}; {hint}")
