"""The one exception tree. Every error a client can see is a WorkbenchError.

Each class carries the RPC error ``code`` sent in ``{"error": {"code", "message"}}`` and the HTTP
status it travels with: transport and credential problems use real HTTP statuses, application
errors travel with HTTP 200, as the product does (see docs/api.md for the table).
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base of every error that reaches an API client or the CLI."""

    code: int = 500
    http_status: int = 500
    # Seconds a client should wait before trying again, sent as Retry-After with the error (None: not sent).
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- transport / credential errors: real HTTP statuses -----------------------------------------


class BadRequest(WorkbenchError):
    """Unreadable JSON, wrong types, unknown or missing parameters."""

    code = 400
    http_status = 400


class Unauthenticated(WorkbenchError):
    """No, bad or revoked credentials, or a disabled user."""

    code = 401
    http_status = 401


class PermissionDenied(WorkbenchError):
    """A valid token that lacks the permission the call needs."""

    code = 403
    http_status = 403


class UnknownMethod(WorkbenchError):
    code = 404
    http_status = 404


class InternalError(WorkbenchError):
    code = 500
    http_status = 500


# -- application errors: HTTP 200 with an error body -------------------------------------------


class InvalidParameter(WorkbenchError):
    """A well-typed parameter whose value the server cannot accept (unknown cluster, limit too high)."""

    code = 1
    http_status = 200


class NotFound(WorkbenchError):
    """The job, session or user named does not exist (or is not visible to the caller)."""

    code = 2
    http_status = 200


class NotAvailable(WorkbenchError):
    """The feature or IDE is not available on this server."""

    code = 3
    http_status = 200


class InvalidState(WorkbenchError):
    """The object exists but is in a state that does not allow the request."""

    code = 4
    http_status = 200


class LaunchFailed(WorkbenchError):
    """The cluster refused or could not start the job (missing account, scheduler error)."""

    code = 5
    http_status = 200


class QuotaExceeded(WorkbenchError):
    """A per-user cap of the configuration is reached (``sessions.max_per_user``)."""

    code = 8
    http_status = 200


# -- errors of the operator's side (CLI, config, store) ----------------------------------------


class ConfigError(WorkbenchError):
    """Invalid configuration; the message names the key."""

    code = 6
    http_status = 500


class StoreError(WorkbenchError):
    """The database failed; translated from SQLAlchemy at the store boundary."""

    code = 7
    http_status = 500


# -- errors of the client's side (openworkbench.client, the CLI client) -------------------------


class ServerUnreachable(WorkbenchError):
    """The client could not reach the server: refused connection, unknown host, timeout, broken stream."""

    code = 0
    http_status = 0


class UnexpectedResponse(WorkbenchError):
    """The server answered something that is not the API's: no error envelope, not JSON (a proxy's HTML page)."""

    code = 0
    http_status = 0
# -- the proxy's own refusals ---------------------------------------------------------------------


class UpstreamRefused(WorkbenchError):
    """What sits where a session's IDE should listen is not that IDE (a symlink, another user's socket).

    The server refuses to talk to it: it connects as root, and whatever answers would be served to the user
    with root's reach. ``detail`` and the uids (``expected``, ``actual``) are for the log, not for the client.
    """

    code = 502
    http_status = 502

    def __init__(self, message: str, detail: str = "", expected: int | None = None, actual: int | None = None) -> None:
        super().__init__(message)
        self.detail = detail
        self.expected = expected
        self.actual = actual

    def log_text(self) -> str:
        found = "no socket" if self.actual is None else f"uid {self.actual}"
        return f"{self.detail}; expected uid {self.expected}, found {found}"


# -- the file system, as root, on paths a user can influence (safefs) ---------------------------


class FileSystemError(InternalError):
    """A file-system operation of the server failed; translated from OSError in safefs, naming the path."""


class UnsafePath(FileSystemError):
    """A path the server was to use as root is not what it must be: a symbolic link, another owner's,
    writable by others, or not a regular file / directory. Nothing was done to it."""


class PathMissing(FileSystemError):
    """The path (or a directory on its way) does not exist."""


# -- limits on what a client may send (answered before any work; docs/security.md) -------------


class RequestTimeout(WorkbenchError):
    """The request line and headers did not arrive within ``server.header_timeout_s``."""

    code = 408
    http_status = 408


class ClientGone(BadRequest):
    """The client closed its connection before its request body arrived: nobody reads the answer. (A kind of
    BadRequest: a client that reads answers knows code 400 as BadRequest.)"""


class PayloadTooLarge(WorkbenchError):
    """A request body over the configured cap."""

    code = 413
    http_status = 413


class HeadersTooLarge(WorkbenchError):
    """Request line and headers over ``server.max_header_bytes``."""

    code = 431
    http_status = 431


class Overloaded(WorkbenchError):
    """More open connections than ``server.max_connections``."""

    code = 503
    http_status = 503
class OutputTooLarge(NotAvailable):
    """A job's output larger than the server streams in one ``get_job_output`` call; sent as the last line."""


# -- job events (services/job_events.py): raised to the server's own waiters, never sent to a client ----------


class JobWaitTimeout(InternalError):
    """A wait for a job to reach some states outlasted its limit; ``last`` is the job's newest known change."""

    def __init__(self, message: str, last: object = None) -> None:
        super().__init__(message)
        self.last = last


class WaitInterrupted(InternalError):
    """A wait on job events that its caller cut short (a stop requested while a session starts)."""


class EventsLost(InternalError):
    """A subscriber fell more than its queue behind: changes were dropped; it must read the store again."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (stopped, restarting, refusing connections): the request did nothing and
    may be tried again. Translated at the store boundary from the driver's connection errors; the server logs
    the outage once, and recovers by itself when the database answers again."""

    code = 503
    http_status = 503
    retry_after = 5  # a restart or failover of PostgreSQL takes seconds; HAProxy and clients honour it


# -- sessions' state machine (sessions/states.py) ---------------------------------------------


class IllegalTransition(InternalError):
    """A session was to move between two states its state machine does not join: a bug, logged and refused
    (nothing is written). Never sent for a client's request, which is refused earlier as ``InvalidState``."""


class SessionMoved(IllegalTransition):
    """A writer read a session in one state and would move it from there, but another writer moved it first
    (a stop ended it): not a bug, a lost race. Nothing is written; the other writer's state stands."""


# -- replicas (services/leadership.py, cli serve) ---------------------------------------------


class StoreInUse(StoreError):
    """``workbench serve`` on a SQLite store another server process already serves: SQLite is single-server
    (replicas need PostgreSQL). Said by the CLI before anything starts; never sent over the API."""
