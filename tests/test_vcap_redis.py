"""
Cloud Foundry Redis bindings that describe a Redis Cluster or sentinels
select the store's mode by themselves (SPEC.md section 7): SAP BTP's form
under the ``redis`` and ``redis-cache`` labels, Spring Cloud Bindings'
``cluster.nodes`` and ``sentinel.*`` keys, and a service found by its tags.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from apicache.config import ConfigError, parse_config
from apicache.daemon.vcap import BindingFiller, parse_vcap_services

ROUTES = [{"type": "object", "path": "/o/<id>", "upstream": "/o/{id}"}]


def vcap(label: str, credentials: dict[str, Any], tags: list[str] | None = None) -> str:
    return json.dumps({label: [{"name": "cache", "label": label, "tags": tags or [], "credentials": credentials}]})


def store(text: str, file_store: dict[str, Any] | None = None) -> Any:
    filler = BindingFiller(parse_vcap_services(text), fetch_ca=lambda u: u)
    data = {"server": {"allow_anonymous": True}, "routes": ROUTES, "upstream": {"base_url": "http://u.example"}}
    if file_store is not None:
        data["store"] = file_store
    return parse_config(data, "apicache.toml", {}, filler).store


SAP_CLUSTER = {
    "cluster_mode": True,
    "hostname": "clustercfg.cache.example",
    "port": 1234,
    "password": "p@ss",
    "tls": True,
    "uri": "rediss://no-user-name-for-redis:p%40ss@clustercfg.cache.example:1234",
}


@pytest.mark.parametrize("label", ["redis-cache", "redis"])
def test_sap_btp_cluster_mode_selects_cluster(label: str) -> None:
    s = store(vcap(label, SAP_CLUSTER))
    assert (s.backend, s.redis_mode) == ("redis", "cluster")
    assert s.redis_url == "rediss://:p%40ss@clustercfg.cache.example:1234/0"
    assert s.redis_hosts == (("clustercfg.cache.example", 1234),)


def test_sap_btp_cluster_mode_as_a_string() -> None:
    s = store(vcap("redis-cache", {**SAP_CLUSTER, "cluster_mode": "true", "tls": "false"}))
    assert (s.redis_mode, s.redis_url) == ("cluster", "redis://:p%40ss@clustercfg.cache.example:1234/0")


def test_sap_btp_without_cluster_mode_is_one_redis_and_drops_the_placeholder_user() -> None:
    s = store(vcap("redis-cache", {**SAP_CLUSTER, "cluster_mode": False}))
    assert (s.backend, s.redis_mode) == ("redis", "single")
    assert s.redis_url == "rediss://:p%40ss@clustercfg.cache.example:1234"


def test_spring_cloud_bindings_sentinels() -> None:
    s = store(vcap("redis", {"sentinel.nodes": "s1.example:26379,s2.example:26380,s3.example",
                             "sentinel.master": "cachemaster", "password": "pw", "database": "2"}))
    assert (s.redis_mode, s.redis_sentinel_master) == ("sentinel", "cachemaster")
    assert s.redis_url == "redis://:pw@s1.example:26379,s2.example:26380,s3.example:26379/2"
    assert s.redis_hosts == (("s1.example", 26379), ("s2.example", 26380), ("s3.example", 26379))


def test_nested_sentinels_with_their_own_password() -> None:
    s = store(vcap("p.redis", {"sentinel": {"nodes": ["10.0.0.1:26379", "10.0.0.2:26379"], "master": "m",
                                            "password": "sp"}, "password": "pw", "tls": True}))
    assert (s.redis_mode, s.redis_sentinel_master) == ("sentinel", "m")
    assert s.redis_url == "rediss://:pw@10.0.0.1:26379,10.0.0.2:26379/0?sentinel_password=sp"


def test_a_list_of_sentinel_objects_and_a_master_name() -> None:
    s = store(vcap("a9s-redis", {"sentinels": [{"host": "h1", "port": 26379}, {"hostname": "h2", "port": "26379"}],
                                 "master_name": "redis-master"}))
    assert (s.redis_mode, s.redis_sentinel_master, s.redis_url) == (
        "sentinel", "redis-master", "redis://h1:26379,h2:26379/0")


def test_cluster_nodes_select_cluster() -> None:
    s = store(vcap("redis", {"cluster": {"nodes": ["n1:7000", "n2:7001"]}, "password": "pw"}))
    assert (s.redis_mode, s.redis_url) == ("cluster", "redis://:pw@n1:7000,n2:7001/0")
    s = store(vcap("redis", {"cluster.nodes": "n1:7000 n2:7001"}))
    assert (s.redis_mode, s.redis_url) == ("cluster", "redis://n1:7000,n2:7001/0")


def test_a_service_found_by_its_tags() -> None:
    s = store(vcap("user-provided", {"host": "r.example", "port": 6380}, tags=["Redis", "cache"]))
    assert (s.backend, s.redis_mode, s.redis_url) == ("redis", "single", "redis://r.example:6380/0")


def test_a_redis_label_wins_over_a_tagged_service() -> None:
    data = json.loads(vcap("redis-cache", SAP_CLUSTER))
    data["user-provided"] = [{"name": "other", "label": "user-provided", "tags": ["redis"],
                              "credentials": {"host": "other.example"}}]
    s = store(json.dumps(data))
    assert s.redis_hosts == (("clustercfg.cache.example", 1234),)


def test_the_files_url_keeps_the_files_mode() -> None:
    s = store(vcap("redis-cache", SAP_CLUSTER), {"redis_url": "redis://mine.example:6379/0"})
    assert (s.redis_mode, s.redis_url) == ("single", "redis://mine.example:6379/0")
    s = store(vcap("redis-cache", SAP_CLUSTER), {"redis_mode": "single"})
    # a cluster binding read as one Redis: its URL is filled, the file's mode kept
    assert (s.redis_mode, s.backend) == ("single", "redis")


def test_bad_sentinel_credentials_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        store(vcap("redis", {"sentinel.nodes": {"not": "a list"}}))
