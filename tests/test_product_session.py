"""The product's in-session flow (issue 12): a session's code calls the API with the RPC cookie alone, as
posit-sdk's Workbench client and mirai do; resource profiles, ``resources``, ``container``; projects.

One JupyterLab session, shared by the tests of this module in file order (the last one ends it).
"""

from __future__ import annotations

import ast
import json
import os
import pwd
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from sqlalchemy import select

from openworkbench.auth.tokens import rpc_cookie
from openworkbench.store import Store
from openworkbench.store.schema import Session
from tests.conftest import Server
from tests.sessions_helpers import kernel_round_trip, launch, session_server, wait_state

LIFETIME_S = 60  # short, so that the renewal of the file is seen within the test
PROFILES = f"""rpc_cookie_lifetime_s = {LIFETIME_S}
[clusters.Local]
type = "Local"
[clusters.Local.profiles.small]
display_name = "Small"
cpus = 1
memory = 200
[clusters.Local.profiles.medium]
cpus = 1
memory = 400
"""
HEADER = "X-RS-Session-Server-RPC-Cookie"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if os.geteuid() != 0:
        pytest.skip("sessions run as a real user: needs root")
    with session_server(tmp_path_factory.mktemp("product") / "data", PROFILES) as server:
        yield server


@pytest.fixture(scope="module")
def owner(srv: Server, posix_user: pwd.struct_passwd) -> str:
    return srv.token(posix_user.pw_name)


@pytest.fixture(scope="module")
def project_dir(posix_user: pwd.struct_passwd) -> Path:
    path = Path(posix_user.pw_dir) / "proj-a"
    path.mkdir(exist_ok=True)
    shutil.chown(path, posix_user.pw_uid, posix_user.pw_gid)
    return path


@pytest.fixture(scope="module")
def running(srv: Server, owner: str, project_dir: Path) -> dict[str, Any]:
    started = launch(srv, owner, "JupyterLab", working_directory=str(project_dir))
    wait_state(srv, owner, started["id"], ("running",))
    return started


# What the kernel runs: a client built from the session's environment alone. The cookie is read and its
# expiry parsed exactly as posit-sdk's CookieReader does (src/posit/workbench/auth/cookie_reader.py).
SDK_CLIENT = '''
import json, os, urllib.request, urllib.error
from datetime import datetime, timezone

def read_cookie():
    value = None
    runtime_dir = os.environ.get("PWB_SESSION_RUNTIME_DIR")
    if runtime_dir:
        try:
            with open(f"{runtime_dir}/rpc_cookie", "r") as cookie_file:
                value = cookie_file.read().strip()
        except Exception:
            value = None
    if value is None:
        value = os.environ["RS_SESSION_RPC_COOKIE"]
    parts = value.split("|")
    expiry_str = parts[1].replace("%2C", ",").replace("%20", " ").replace("%3A", ":")
    expiry = datetime.strptime(expiry_str, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=timezone.utc)
    return value, expiry

def call(method, **kwparams):
    cookie, expiry = read_cookie()
    assert datetime.now(timezone.utc) < expiry, expiry
    body = json.dumps({"method": method, "kwparams": kwparams}).encode()
    request = urllib.request.Request(os.environ["RS_SERVER_ADDRESS"].rstrip("/") + "/api/" + method, data=body,
                                     headers={"X-RS-Session-Server-RPC-Cookie": cookie,
                                              "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request))
'''

# A job's own limits as the server set them in its cgroups (v1): the job finds its own by its pid.
SHOW_LIMITS = '''
import glob, os, time
time.sleep(1)  # long enough to be seen Running

def own(controller, name):
    for path in glob.glob(f"/sys/fs/cgroup/{controller}/openworkbench/*/"):
        with open(path + "cgroup.procs") as procs:
            if str(os.getpid()) in procs.read().split():
                with open(path + name) as value:
                    return int(value.read())

print(own("memory", "memory.limit_in_bytes") // (1024 * 1024), own("cpu", "cpu.cfs_quota_us"))
'''

# A job launched from the session that calls the API itself and launches a job of its own.
CHILD = SDK_CLIENT + '''
sessions = [s["id"] for s in call("get_session")["result"]["sessions"]]
grandchild = call("launch_job", job={"name": "grandchild", "exe": "/bin/true", "resourceProfile": "small"})
print(json.dumps({"sessions": sessions, "grandchild": grandchild["result"]["job"]["id"],
                  "product": os.environ["POSIT_PRODUCT"]}))
'''

IN_SESSION = SDK_CLIENT + '''
import stat
result = {}
try:
    envs = call("get_compute_envs")["result"]["clusters"][0]
    profile = envs["resourceProfiles"][0]["name"]
    launched = [
        call("launch_job", job={"cluster": envs["name"], "name": "by profile", "exe": "/usr/bin/python3",
                                "args": ["-c", SHOW_LIMITS], "resourceProfile": profile}),
        call("launch_job", job={"cluster": envs["name"], "name": "by resources", "exe": "/usr/bin/python3",
                                "args": ["-c", SHOW_LIMITS], "resources": {"cpus": 1, "memory": 300}}),
        call("launch_job", job={"name": "child", "exe": "/usr/bin/python3", "args": ["-c", CHILD]}),
    ]
    info = os.stat(os.environ["PWB_SESSION_RUNTIME_DIR"] + "/rpc_cookie")
    result = {"jobs": [item.get("result", item) for item in launched], "profile": profile,
              "product": os.environ.get("POSIT_PRODUCT"), "address": os.environ.get("RS_SERVER_ADDRESS"),
              "runtime_dir": os.environ["PWB_SESSION_RUNTIME_DIR"], "mode": stat.S_IMODE(info.st_mode),
              "uid": info.st_uid, "me": os.getuid(), "env_cookie": os.environ["RS_SESSION_RPC_COOKIE"]}
except Exception as exc:
    result = {"error": repr(exc)}
repr(result)
'''


def in_session(srv: Server, owner: str, running: dict[str, Any]) -> dict[str, Any]:
    code = f"SHOW_LIMITS = {SHOW_LIMITS!r}\nCHILD = {CHILD!r}\n" + IN_SESSION
    found = ast.literal_eval(ast.literal_eval(kernel_round_trip(srv.url + running["url"], owner, code)))
    assert "error" not in found, found
    return dict(found)


def output(srv: Server, token: str, job_id: str) -> str:
    body = {"method": "get_job_output", "kwparams": {"job_id": job_id}}
    with httpx.stream("POST", f"{srv.url}/api/get_job_output", json=body,
                      headers={"Authorization": f"Bearer {token}"}, timeout=60) as resp:
        return "".join(json.loads(line)["output"] for line in resp.iter_lines())


STATE: dict[str, Any] = {}


def test_a_session_kernel_launches_jobs_by_profile_and_by_resources(
        srv: Server, owner: str, running: dict[str, Any], posix_user: pwd.struct_passwd) -> None:
    found = in_session(srv, owner, running)
    STATE.update(found)
    assert found["product"] == "WORKBENCH" and found["address"] == srv.url and found["profile"] == "small"
    assert (found["mode"], found["uid"], found["me"]) == (0o600, posix_user.pw_uid, posix_user.pw_uid)
    by_profile, by_resources, _ = (item["job"] for item in found["jobs"])
    done = {job_id: srv.wait_job(owner, job_id, timeout=60) for job_id in (by_profile["id"], by_resources["id"])}
    profile_job, resources_job = done[by_profile["id"]], done[by_resources["id"]]
    limits = {item["type"]: item["value"] for item in profile_job["resourceLimits"]}
    assert (limits, profile_job["resourceProfile"]) == ({"cpuCount": "1", "memory": "200"}, "small")
    limits = {item["type"]: item["value"] for item in resources_job["resourceLimits"]}
    assert (limits, resources_job["resourceProfile"]) == ({"cpuCount": "1", "memory": "300"}, "custom")
    # Applied for real: what the job's own cgroups say (MB, and a quota of one CPU per 100 ms period).
    for job, memory in ((profile_job, "200"), (resources_job, "300")):
        text = output(srv, owner, job["id"])
        assert text.split() == [memory, "100000"], text
    for job in (profile_job, resources_job):
        assert (job["status"], job["statusCode"]) == ("Finished", "0"), job
        assert job["submissionTime"] <= job["runningTimestamp"] <= job["terminatedTime"]
        assert job["group"] == os.popen(f"id -gn {posix_user.pw_name}").read().strip()


def test_e_a_job_launched_from_the_session_calls_the_api_and_launches_a_job(
        srv: Server, owner: str, running: dict[str, Any]) -> None:
    child = STATE["jobs"][2]["job"]
    shown = {item["name"]: item["value"] for item in child["environment"]}
    assert shown["RS_SESSION_RPC_COOKIE"] == "********" and shown["POSIT_PRODUCT"] == "WORKBENCH"
    done = srv.wait_job(owner, child["id"], timeout=60)
    text = output(srv, owner, child["id"])
    assert done["exitCode"] == 0, text + output(srv, owner, child["id"])
    said = json.loads(text)
    assert running["id"] in said["sessions"] and said["product"] == "WORKBENCH"
    grandchild = srv.wait_job(owner, said["grandchild"], timeout=60)
    assert (grandchild["status"], grandchild["exitCode"], grandchild["resourceProfile"]) == ("Finished", 0, "small")


def mirai_job(**extra: Any) -> dict[str, Any]:
    """mirai's http_config() body: the cluster, its defaultImage, and a profile name or resources."""
    job = {"cluster": "Local", "container": {"image": ""}, "name": "mirai_daemon", "exe": "/usr/bin/python3",
           "args": ["-c", "print('daemon')"]}
    return {"method": "launch_job", "kwparams": {"job": {**job, **extra}}}


def mirai_post(srv: Server, body: dict[str, Any], cookie: str, both: bool = True) -> httpx.Response:
    headers = {"Cookie": cookie, **({HEADER: cookie} if both else {})}
    return httpx.post(f"{srv.url}/api/launch_job", json=body, headers=headers)


def test_c_mirai_launch_bodies_are_accepted_and_a_container_image_is_refused(
        srv: Server, owner: str, running: dict[str, Any]) -> None:
    cookie = Path(STATE["runtime_dir"], "rpc_cookie").read_text().strip()
    envs = httpx.get(f"{srv.url}/api/get_compute_envs", headers={"Cookie": cookie, HEADER: cookie}).json()
    cluster = envs["result"]["clusters"][0]
    assert cluster["defaultImage"] == "" and [p["name"] for p in cluster["resourceProfiles"]] == ["small", "medium"]
    assert cluster["resourceProfiles"][0] == {"name": "small", "displayName": "Small", "cpus": 1, "memory": 200,
                                              "queue": "", "placementConstraints": []}
    accepted = [mirai_job(resourceProfile="small"), mirai_job(resources={"cpus": 1, "memory": 512}),
                {"method": "launch_job", "kwparams": {"job": {**mirai_job()["kwparams"]["job"], "container": {}}}}]
    for body in accepted:
        answer = mirai_post(srv, body, cookie)
        assert answer.status_code == 200 and "result" in answer.json(), answer.text
    only_cookie = mirai_post(srv, mirai_job(resourceProfile="medium"), cookie, both=False)  # `Cookie:` alone
    job = srv.wait_job(owner, only_cookie.json()["result"]["job"]["id"], timeout=60)
    assert {item["type"]: item["value"] for item in job["resourceLimits"]}["memory"] == "400"
    refused = mirai_post(srv, mirai_job(container={"image": "rocker/r-ver:4"}, resourceProfile="small"), cookie)
    assert refused.status_code == 200
    assert refused.json()["error"]["message"] == (
        "cluster 'Local' runs no containers: the container image must be empty or null, got 'rocker/r-ver:4' "
        "(this cluster does not support containers)")
    errors = {
        "resourceProfile": (mirai_job(resourceProfile="huge"), "has no resource profile 'huge'"),
        "runAs": (mirai_job(container={"image": "", "runAsUserId": 0}), "runAsUserId/runAsGroupId cannot be"),
        "unknown": (mirai_job(gpus=2), "unknown parameter 'kwparams.job.gpus'"),
        "too big": (mirai_job(resources={"cpus": 1, "memory": 1e12}), "invalid 'kwparams.job.resources.memory'"),
        "group": (mirai_job(group="root"), "is not a member of group 'root'"),
    }
    for body, message in errors.values():
        answer = mirai_post(srv, body, cookie).json()
        assert message in answer["error"]["message"], answer


def test_d_projects_and_launching_in_a_project(srv: Server, owner: str, running: dict[str, Any],
                                              project_dir: Path, posix_user: pwd.struct_passwd) -> None:
    result = srv.rpc("get_session", owner, include_projects=True)
    project = next(item for item in result["projects"] if item["path"] == str(project_dir))
    assert project["name"] == project["display_name"] == "proj-a" and project["owner"] == posix_user.pw_name
    assert project["last_session_id"] == running["id"] and project["editors"] == ["JupyterLab"]
    assert {"id", "last_editor", "last_used", "created"} <= set(project)
    second = launch(srv, owner, "JupyterLab", project_id=project["id"])
    try:
        listed = srv.rpc("get_session", owner, session_id=second["id"])["sessions"][0]
        assert listed["working_dir"] == str(project_dir)
    finally:
        srv.rpc("stop_session", owner, session_ids=second["id"], force_quit=True)
        wait_state(srv, owner, second["id"], ("killed", "canceled", "finished"))
    unknown = srv.post("launch_session", owner, workbench="JupyterLab", project_id="0badc0de").json()
    assert "project_id '0badc0de': user" in unknown["error"]["message"]
    assert srv.rpc("get_session", owner, session_id=second["id"])["sessions"]  # the bad call changed nothing else


POSIT_SDK = """
import sys
sys.path.insert(0, {path!r})
try:
    from posit.workbench import Client
    client = Client()  # reads RS_SERVER_ADDRESS, POSIT_PRODUCT and the cookie, and parses its expiry
    listed = client.post("api/get_session", json={{"method": "get_session", "kwparams": {{}}}})
    job = {{"name": "sdk", "exe": "/bin/true", "resourceProfile": "medium"}}
    launched = client.post("api/launch_job", json={{"method": "launch_job", "kwparams": {{"job": job}}}})
    expiry = client.session.auth._cookie_reader.expiry_time
    result = {{"sessions": [s["id"] for s in listed.json()["result"]["sessions"]],
              "job": launched.json()["result"]["job"]["id"], "expiry": str(expiry)}}
except Exception as exc:
    result = {{"error": repr(exc)}}
repr(result)
"""


def test_d2_the_released_posit_sdk_client_works_in_the_session(
        srv: Server, owner: str, running: dict[str, Any]) -> None:
    posit = pytest.importorskip("posit.workbench")  # posit-sdk, a dev dependency (pyproject.toml)
    # A copy the session's user can read (the kernel's own Python has requests, packaging, typing_extensions).
    where = Path("/tmp") / f"owb-psdk-{os.getpid()}-{time.monotonic_ns()}"
    shutil.copytree(Path(posit.__file__).parents[1], where / "posit")
    os.chmod(where, 0o755)
    try:
        text = kernel_round_trip(srv.url + running["url"], owner, POSIT_SDK.format(path=str(where)))
        found = ast.literal_eval(ast.literal_eval(text))
    finally:
        shutil.rmtree(where)
    assert "error" not in found, found
    assert running["id"] in found["sessions"] and found["expiry"].endswith("+00:00")
    job = srv.wait_job(owner, found["job"], timeout=60)
    assert (job["status"], job["resourceProfile"]) == ("Finished", "medium")


def secret_of(srv: Server, session_id: str) -> str:
    store = Store(f"sqlite:///{srv.data_dir / 'workbench.db'}")
    try:
        with store.session() as db:
            return str(db.scalar(select(Session.secret).where(Session.id == session_id)))
    finally:
        store.dispose()


def test_b_cookie_renewed_and_refused_once_expired_tampered_suspended_or_stopped(
        srv: Server, owner: str, running: dict[str, Any]) -> None:
    def status(cookie: str, as_cookie: bool = False) -> httpx.Response:
        headers = {"Cookie": f"rpc={cookie}"} if as_cookie else {HEADER: cookie}
        return httpx.post(f"{srv.url}/api/get_session", json={}, headers=headers)

    path = Path(STATE["runtime_dir"], "rpc_cookie")
    first = STATE["env_cookie"]
    deadline = time.monotonic() + LIFETIME_S
    while path.read_text().strip() == first and time.monotonic() < deadline:
        time.sleep(0.5)
    renewed = path.read_text().strip()
    assert renewed != first  # renewed before the first one expired
    assert status(renewed).status_code == 200 and status(renewed, as_cookie=True).status_code == 200
    sid, expiry, mac = renewed.split("|")
    longer = parsedate_to_datetime(unquote(expiry)) + timedelta(days=365)
    later = quote(format_datetime(longer, usegmt=True), safe="")  # a year more, the same MAC
    assert status(f"{sid}|{later}|{mac}").status_code == 401
    assert status(f"{sid}|{expiry}|{mac[:-1]}{'0' if mac[-1] != '0' else '1'}").status_code == 401
    expired = rpc_cookie(sid, secret_of(srv, sid), datetime.now(UTC) - timedelta(seconds=1))  # genuine MAC
    assert "expired" in status(expired).json()["error"]["message"]
    srv.rpc("stop_session", owner, session_ids=running["id"], suspend_session=True)
    wait_state(srv, owner, running["id"], ("suspended",))
    assert "ended (suspended)" in status(renewed).json()["error"]["message"]
    srv.rpc("resume_session", owner, session_id=running["id"])
    wait_state(srv, owner, running["id"], ("running",))
    resumed = path.read_text().strip()
    assert status(resumed).status_code == 200
    srv.rpc("stop_session", owner, session_ids=running["id"])
    wait_state(srv, owner, running["id"], ("finished",))
    for cookie in (resumed, renewed):
        answer = status(cookie)
        assert answer.status_code == 401 and "ended (finished)" in answer.json()["error"]["message"]
    assert not path.exists()  # its runtime directory went with it
