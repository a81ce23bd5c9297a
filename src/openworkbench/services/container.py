"""Wiring: build every service from the settings, once per process."""

from __future__ import annotations

from dataclasses import dataclass, field

from openworkbench.auth.cache import PrincipalCache
from openworkbench.clusters.base import Cluster
from openworkbench.clusters.local import LocalCluster
from openworkbench.clusters.slurm import SlurmCluster
from openworkbench.config import Settings
from openworkbench.errors import ConfigError
from openworkbench.proxy import RouteTable, UpstreamPool
from openworkbench.services.accounts import Accounts
from openworkbench.services.history import History
from openworkbench.services.job_monitor import monitor_role
from openworkbench.services.job_relay import Relay
from openworkbench.services.job_views import JobViews
from openworkbench.services.jobs import JobService
from openworkbench.services.leadership import Leadership, Liveness, new_replica_id
from openworkbench.services.password_signin import PasswordSignIn
from openworkbench.services.retention import Retention
from openworkbench.services.run_as import RunAsPolicy
from openworkbench.services.signin import SignIn
from openworkbench.sessions import files as session_files
from openworkbench.sessions.live import SessionFeed
from openworkbench.sessions.origins import SessionOrigins
from openworkbench.sessions.runner import SessionRunner
from openworkbench.sessions.service import SessionService
from openworkbench.sessions.watch import SESSIONS_ROLE, SessionWatch
from openworkbench.store import Store
from openworkbench.store.epochs import open_epochs


@dataclass
class Services:
    settings: Settings
    store: Store
    accounts: Accounts
    clusters: dict[str, Cluster]
    jobs: JobService
    pool: UpstreamPool
    runner: SessionRunner
    watch: SessionWatch
    sessions: SessionService
    signin: SignIn
    passwords: PasswordSignIn
    job_views: JobViews
    history: History
    retention: Retention
    origins: SessionOrigins | None = None  # server.session_domain set: each session on its own host
    live: SessionFeed = field(default_factory=SessionFeed)  # what the homepage's long-poll waits on
    # Replicas (services/leadership.py): who leads what; whether another replica lives; their job changes.
    leadership: Leadership | None = None
    liveness: Liveness | None = None
    relay: Relay | None = None

    @property
    def routes(self) -> RouteTable:
        """The proxy's routes (in the store, cached here): the runner writes them, the proxy reads them."""
        return self.runner.routes

    def close(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        if self.leadership is not None:
            self.leadership.stop()
        for cluster in self.clusters.values():
            cluster.close()
        if self.accounts.cache is not None:
            self.accounts.cache.epoch.close()
        self.routes.close()
        self.store.dispose()


def open_store(settings: Settings) -> Store:
    # The data dir holds the token database and job state: the operator's alone, like /etc/shadow.
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)
    store = Store(settings.database_url)
    store.migrate()
    return store


def build_clusters(settings: Settings) -> dict[str, Cluster]:
    clusters: dict[str, Cluster] = {}
    jobs_dir = settings.data_dir.resolve() / "jobs"
    for name, conf in settings.clusters.items():
        if conf.type == "Local":
            clusters[name] = LocalCluster(name, conf, settings.local, jobs_dir)
        elif conf.type == "Slurm":
            clusters[name] = SlurmCluster(name, conf)
        else:
            raise ConfigError(f"config key 'clusters.{name}.type': cluster type '{conf.type}' is not supported yet")
    return clusters


def build_services(settings: Settings) -> Services:
    store = open_store(settings)
    # At start-up, not at the first launch: a user must never get to create it first.
    session_files.prepare_runtime_root(settings.sessions.runtime_dir)
    # The auth and routes epochs, read together: a proxied request checks both in one round trip.
    epochs = open_epochs(settings.database_url)
    accounts = Accounts(store, PrincipalCache(epochs.counter(0)))
    clusters = build_clusters(settings)
    run_as = RunAsPolicy.load(settings.auth.allowed_system_users)
    replica_id = new_replica_id()
    jobs = JobService(store, accounts, clusters, settings.default_cluster, run_as,
                      settings.jobs.output_stream_max_bytes, replica_id)
    leadership = Leadership(settings.database_url, replica_id, [*map(monitor_role, clusters), SESSIONS_ROLE],
                            settings.database.leader_check_interval_s)
    jobs.monitors = lambda cluster: leadership.leads(monitor_role(cluster))
    liveness = Liveness(store, replica_id)
    pool = UpstreamPool()
    runner = SessionRunner(settings, store, jobs, pool, RouteTable(store, epochs.counter(1)))
    runner.replica_id = replica_id
    origins = SessionOrigins(settings.server.session_domain) if settings.server.session_domain else None
    sessions = SessionService(settings, store, jobs, runner, public_url=origins.url if origins else None)
    watch = SessionWatch(runner, leadership, liveness)
    job_views = JobViews(store, settings.jobs.expiry_hours)
    store.watch_commits(job_views.written)
    history = History(store)
    store.watch_commits(history.written)
    signin = SignIn(accounts)
    passwords = PasswordSignIn(settings.auth, signin, run_as)
    live = SessionFeed(settings.server.live_max_waiters, settings.server.live_max_waiters_per_user)
    sessions.views.listeners.append(live.written)
    return Services(settings, store, accounts, clusters, jobs, pool, runner, watch, sessions, signin, passwords,
                    job_views, history, Retention(store, settings.jobs), origins, live, leadership, liveness,
                    Relay(store, replica_id, jobs.events, jobs.changes_of))
