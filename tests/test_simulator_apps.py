"""The simulator's vendor apps: many apps on one gateway, one live token per app, and when
each request arrived (what the exporter's budget, token and redaction tests stand on)."""

from __future__ import annotations

import httpx2

from exporter.simulator import SimConfig, Simulator

TOKEN = "/apigovernance/api/oauth/tokenByAkSk"
QUERY = "/apiaccess/CC-Management/v2/mobileAgent/queryPhone"
PAGE = {"offset": 0, "limit": 10}


def token(client: httpx2.Client, app_key: str, app_secret: str) -> httpx2.Response:
    return client.post(TOKEN, json={"app_key": app_key, "app_secret": app_secret})


def page_status(client: httpx2.Client, app_key: str, access_token: str) -> int:
    headers = {"Authorization": f"Bearer {access_token}", "X-APP-Key": app_key}
    return client.post(QUERY, json=PAGE, headers=headers).status_code


def test_each_app_has_its_own_secret_and_tokens() -> None:
    with (
        Simulator(SimConfig(phones=10, app_key="k", app_secret="s", apps=3)) as sim,
        httpx2.Client(base_url=sim.url, timeout=5) as client,
    ):
        assert [token(client, f"k-{n}", f"s-{n}").status_code for n in (1, 2)] == [200, 200]
        for app_key, app_secret in (("k-3", "s-3"), ("k-1", "s"), ("k-01", "s-1"), ("k", "s-1")):
            assert token(client, app_key, app_secret).status_code == 401, app_key
        answer = token(client, "k-2", "s-2").json()
        assert answer["AppKey"] == "k-2"
        assert page_status(client, "k-2", answer["AccessToken"]) == 200
        assert page_status(client, "k", answer["AccessToken"]) == 401  # another app's token


def test_one_token_per_app_revokes_the_apps_older_tokens_only() -> None:
    with (
        Simulator(SimConfig(phones=10, app_key="k", app_secret="s", apps=2)) as sim,
        httpx2.Client(base_url=sim.url, timeout=5) as client,
    ):
        first, other = (
            token(client, key, secret).json()["AccessToken"]
            for key, secret in (
                ("k", "s"),
                ("k-1", "s-1"),
            )
        )
        second = token(client, "k", "s").json()["AccessToken"]
        assert page_status(client, "k", first) == 200  # by default tokens live side by side
        sim.update(one_token_per_app=True)
        third = token(client, "k", "s").json()["AccessToken"]
        statuses = [page_status(client, "k", t) for t in (first, second, third)]
        assert statuses == [401, 401, 200]
        assert page_status(client, "k-1", other) == 200
        assert sim.stats()["unauthorized"] == 2


def test_arrivals_say_when_each_request_came() -> None:
    with (
        Simulator(SimConfig(phones=10)) as sim,
        httpx2.Client(base_url=sim.url, timeout=5) as client,
    ):
        access = token(client, sim.config.app_key, sim.config.app_secret).json()["AccessToken"]
        for _ in range(2):
            assert page_status(client, sim.config.app_key, access) == 200
        arrivals = sim.stats()["arrivals"]
        assert isinstance(arrivals, list)
        assert [api for api, _ in arrivals] == ["tokenByAkSk", "queryPhone", "queryPhone"]
        times = [at for _, at in arrivals]
        assert times == sorted(times)
        sim.reset_stats()
        assert sim.stats()["arrivals"] == []
