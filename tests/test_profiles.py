"""Resource profiles and the product's job fields, resolved into what every cluster checks (issue 12)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openworkbench.clusters.base import refuse_containers
from openworkbench.clusters.profiles import describe_profiles, resolve
from openworkbench.config import ClusterSettings, load_settings
from openworkbench.errors import ConfigError, InvalidParameter
from openworkbench.models import JobSpec
from tests.conftest import Server

SLURMISH = ClusterSettings.model_validate({
    "type": "Local", "queues": ["short", "gpu"], "placement_constraints": ["a100", "ib"],
    "profiles": {"gpu": {"display_name": "GPU node", "cpus": 8, "memory": 65536, "queue": "gpu",
                         "constraints": ["a100"]},
                 "small": {"cpus": 1}},
})


def spec(**fields: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "j", "exe": "/bin/true", **fields})


def limits(job: JobSpec) -> dict[str, str]:
    return {item.type: item.value for item in job.resource_limits}


def test_a_profile_becomes_limits_a_queue_and_constraints() -> None:
    job = resolve("C", SLURMISH, spec(resourceProfile="gpu", placementConstraints=[{"name": "ib", "value": ""}]))
    assert limits(job) == {"cpuCount": "8", "memory": "65536"} and job.queues == ["gpu"]
    assert [c.name for c in job.placement_constraints] == ["ib", "a100"] and job.resource_profile == "gpu"
    # The job's own limits and queue win over the profile's; resources set what they name.
    job = resolve("C", SLURMISH, spec(resourceProfile="gpu", queues=["short"], resources={"memory": 1024},
                                      resource_limits=[{"type": "cpuCount", "value": "2"}]))
    assert limits(job) == {"cpuCount": "2", "memory": "1024"} and job.queues == ["short"]
    assert limits(resolve("C", SLURMISH, spec(resources={"cpus": 2, "memory": 300.5}))) == {
        "cpuCount": "2", "memory": "300.5"}
    assert resolve("C", SLURMISH, spec()).resource_profile == "custom" and limits(resolve("C", SLURMISH, spec())) == {}


@pytest.mark.parametrize(("fields", "message"), [
    ({"resourceProfile": "huge"}, "cluster 'C' has no resource profile 'huge'; its profiles: gpu, small"),
    ({"resources": {"cpus": 1}, "resource_limits": [{"type": "cpuCount", "value": "1"}]},
     "job.resources and job.resource_limits both set cpuCount: give one"),
    ({"container": {"image": "a"}, "container_image": "b"}, "job.container.image ('a') and job.container_image"),
])
def test_conflicts_and_unknown_profiles_are_refused_by_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameter, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve("C", SLURMISH, spec(**fields))


@pytest.mark.parametrize("container", [None, {}, {"image": ""}, {"image": None}])
def test_an_empty_or_null_image_is_no_container_request(container: dict[str, Any] | None) -> None:
    refuse_containers("C", spec(container=container))


def test_every_cluster_has_a_default_profile_within_its_limits() -> None:
    bare = ClusterSettings(type="Local")
    assert describe_profiles(bare) == [{"name": "default", "displayName": "Default", "cpus": 1.0, "memory": 2048.0,
                                        "queue": "", "placementConstraints": []}]
    capped = ClusterSettings.model_validate({"type": "Local", "limits": {"memory": {"max": 512},
                                                                         "cpuCount": {"default": 2}}})
    assert [(p["cpus"], p["memory"]) for p in describe_profiles(capped)] == [(2.0, 512.0)]


@pytest.mark.parametrize(("toml", "message"), [
    ('[clusters.L]\ntype = "Local"\nqueues = ["a"]\n[clusters.L.profiles.p]\nqueue = "b"\n', "queue: 'b' is not"),
    ('[clusters.L]\ntype = "Local"\n[clusters.L.profiles.p]\nconstraints = ["gpu"]\n', "not in placement_constr"),
    ('[clusters.L]\ntype = "Local"\n[clusters.L.profiles.custom]\ncpus = 1\n', "'custom' and the empty name"),
    ('[clusters.L]\ntype = "Local"\n[clusters.L.profiles.p]\nmemory = -1\n', "profiles.p.memory"),
    ('[clusters.L]\ntype = "Local"\n[clusters.L.profiles.p]\ncolour = "red"\n', "profiles.p.colour"),
    ("[sessions]\nrpc_cookie_lifetime_s = 1\n", "sessions.rpc_cookie_lifetime_s"),
])
def test_bad_profiles_and_lifetimes_stop_the_server_naming_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


def test_launch_parameters_profile_and_image_of_a_session_are_checked(server: Server) -> None:
    token = server.token("root", "super-admin")
    bad = {"launch_parameters": {"resource_profile": "huge"}, "username": "root"}
    answer = server.post("launch_session", token, workbench="JupyterLab", **bad).json()
    assert "has no resource profile 'huge'" in answer["error"]["message"], answer
    image = {"launch_parameters": {"default_image": "r:4"}, "username": "root"}
    answer = server.post("launch_session", token, workbench="JupyterLab", **image).json()
    assert "runs no containers" in answer["error"]["message"], answer
    assert server.rpc("get_session", token, user="root")["sessions"] == []  # nothing was recorded
