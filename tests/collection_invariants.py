"""A seeded random run of the collection path, checked against invariants after every step.

The parts are real: CEC simulators (one per vendor app) in this process, and
``cec-phone-exporter serve`` in its own, at debug level, scraped over loopback. A step is
one of: a roster edit (``POST /_sim/phones``), a fault or two for the next scrapes, token
revocation, a reload (a target's settings, a target added or removed, a rate budget),
or a round of concurrent ``/metrics``, ``/probe`` (plain and debug), landing-page and
``/sd`` requests with random scrape timeouts. Edits, faults and reloads happen
between rounds, so every collection of a round sees one roster.

After each round, and while it runs:

- ``in time``: every scrape answered 200 before its timeout (timeouts of 0.5 s and
  more; below, the loopback round trip under load decides);
- ``up for all``: ``cec_up`` for every target asked, once;
- ``counts``: ``cec_up 1`` => ``cec_softphones``, ``cec_softphones_allocated`` and the
  per-phone series equal the simulator's roster of that round;
- ``down is bare``: ``cec_up 0`` => no count series for that target;
- ``changes``: the change counters equal the true difference between the rosters of
  consecutive successful collections (a success seen or not, learnt from
  ``cec_last_success_timestamp_seconds`` once the round's collections ended), start at 0
  from a target's first success after start or after a reload that changes it, and do
  not move while the roster does not;
- ``monotone``: no API or failure counter goes down while its target stays configured;
- ``no secret``: no app secret, token or phone password, raw, JSON-escaped,
  ``\\uXXXX``-escaped or percent-encoded, in any answer or log line;
- ``budget`` (``check_budget``): a rate budget that fits k whole collections before the
  deadline gives at least 0.8 k of its app's targets up, once each of them has been read
  (a target learns its size from its first page; the size outlives a reload) and while
  the app's token is live (after a revocation each collection pays an unbooked 401).

``Run.step`` raises AssertionError naming the seed, the step and the last steps taken.
"""

from __future__ import annotations

import json
import math
import random
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import yaml
from support import parse_samples, samples_named, softphone_counts
from support_procs import ServeProcess

from exporter.simulator import Fault, SimConfig, Simulator
from exporter.simulator.model import phone_record

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
SETTLE = "0.01"  # a scrape timeout below the floor: answers without starting a collection
PASSWORD_PREFIX = "SIPPW-canary-"
APPS = {  # app -> (simulator settings, targets on it)
    "alpha": (dict(phones=320, tenants=3, suspended_ratio=0.2, mode="single"), 2),
    "beta": (dict(phones=180, tenants=2, suspended_ratio=0.1, mode="pool"), 1),
}
SECRETS = {"alpha": 's3cr/et+Alpha=%7e"q', "beta": "B\\eta-s3cret/+&x"}
FAULTS: list[Callable[[random.Random, int], Fault]] = [
    lambda r, p: Fault("slow", pages=(r.randrange(p),), value=r.choice([0.05, 0.3, 1.5])),
    lambda r, p: Fault("hang", pages=(r.randrange(1, p),), value=4, times=1),
    lambda r, p: Fault("http_status", value=r.choice([500, 502, 503, 429]), times=r.randint(1, 3)),
    lambda r, p: Fault("ret_code", pages=(r.randrange(p),), value=r.choice(["1", "2"]), times=1),
    lambda r, p: Fault("short_page", pages=(r.randrange(p - 1),), times=r.randint(1, 2)),
    lambda r, p: Fault("total_shift", pages=(r.randrange(1, p),), value=r.choice([-3, 2]), times=1),
    lambda r, p: Fault("duplicate", pages=(r.randrange(1, p),)),
    lambda r, p: Fault("twin", pages=(r.randrange(1, p),), value=r.randrange(50)),
    lambda r, p: Fault("no_total", pages=(r.randrange(p),)),
    lambda r, p: Fault("shift", pages=(r.randrange(1, p),), times=1),
    lambda r, p: Fault("malformed_json", pages=(r.randrange(p),), times=1),
    lambda r, p: Fault("http_status", api="tokenByAkSk", value=500, times=1),
]
DEFAULTS = {"page_size": 100, "max_concurrency": 4, "timeout_seconds": 10, "cache_ttl_seconds": 0}
"""The settings a reload changes, as the exporter has them when the config leaves them out."""
Roster = dict[tuple[str, str], tuple[str, str]]
"""(id, phoneNum) -> (tenantId, status): the simulator's phones, as the exporter keys them."""


def roster(sim: Simulator) -> Roster:
    """The phones ``sim`` lists now."""
    config, phones = sim.config, {}
    for i in config.edits.indices(0, config.phones):
        record = phone_record(config, i)
        code = record.get("status")
        status = {0: "registered", 1: "suspended"}.get(-1 if code is None else int(code))
        key = (str(record.get("id", "")), str(record["phoneNum"]))
        phones[key] = (str(record.get("tenantId", "")), status or "unknown")
    return phones


def changes_between(
    before: Mapping[Hashable, tuple[str, str]], after: Mapping[Hashable, tuple[str, str]]
) -> Counter[tuple[str, ...]]:
    """What the change counters add from ``before`` to ``after`` (phone -> tenant, status):
    (tenant, from, to) and (tenant, ``added`` or ``removed``), as SPEC section 6 has it."""
    found: Counter[tuple[str, ...]] = Counter()
    for key in before.keys() | after.keys():
        was, now = before.get(key), after.get(key)
        if was is None or now is None or was[0] != now[0]:
            if was is not None:
                found[(was[0], "removed")] += 1
            if now is not None:
                found[(now[0], "added")] += 1
        elif was[1] != now[1]:
            found[(now[0], was[1], now[1])] += 1
    return found


def counters(text: str, target: str) -> Counter[tuple[str, ...]]:
    """The change counters of ``target`` in an answer, non-zero ones."""
    found: Counter[tuple[str, ...]] = Counter()
    for labels, value in samples_named(text, "cec_softphone_status_changes_total"):
        if labels["target"] == target and value:
            found[(labels["tenant_id"], labels["from"], labels["to"])] = int(value)
    for labels, value in samples_named(text, "cec_softphone_allocation_changes_total"):
        if labels["target"] == target and value:
            found[(labels["tenant_id"], labels["change"])] = int(value)
    return found


def secret_forms(secret: str) -> set[str]:
    """``secret`` as it could be written: raw, JSON-escaped, \\u-escaped, percent-encoded."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        "".join(f"\\u{ord(c):04x}" for c in secret),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
    }


@dataclass
class Tracked:
    """What the run knows of one target: its roster at its last success and its counters."""

    app: str
    baseline: Roster | None = None
    counts: Counter[tuple[str, ...]] = field(default_factory=Counter)
    last_success: float | None = None
    seen: dict[float, tuple[Roster, Counter[tuple[str, ...]]]] = field(default_factory=dict)
    """The roster and counters of each success whose time the run learnt: what an answer
    from the cache must show."""


@dataclass
class Answer:
    """One request of a round and what came back."""

    path: str
    timeout: float | None
    seconds: float
    status: int
    text: str
    targets: list[str]


class Run:
    """Simulators, one exporter, the model of what it must show, and the steps."""

    def __init__(
        self, workdir: Path, seed: int, check_budget: bool = False, more_targets: int = 0
    ) -> None:
        self.rng = random.Random(seed)
        self.seed, self.check_budget, self.workdir = seed, check_budget, workdir
        self.sims: dict[str, Simulator] = {}
        self.entries: dict[str, dict[str, Any]] = {}
        self.tracked: dict[str, Tracked] = {}
        for app, (settings, count) in APPS.items():
            sim = Simulator(
                SimConfig(app_key=f"key-{app}", app_secret=SECRETS[app], jitter_ms=15.0, **settings)
            ).start()
            self.sims[app] = sim
            for n in range(count + (more_targets if app == "alpha" else 0)):
                self._add_target(f"{app}{n}", app)
        self.checked: Counter[str] = Counter()
        self.steps: Counter[str] = Counter()
        self.taken: list[str] = []
        self.monotone: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.budget: float = 0.0
        self.revoked: set[str] = set()
        """Apps whose tokens were revoked since a target of theirs last succeeded: the next
        collections each meet a 401 (a renewal and a retry the budget did not book)."""
        self.logged = 0  # exporter output lines checked for secrets so far
        self.config = workdir / "config.yml"
        self._write_config()
        self.exporter = ServeProcess.on_free_port(
            "serve", "--config", str(self.config), "--log-level", "debug"
        ).start()
        self.http = httpx2.Client(base_url=self.exporter.url, timeout=30)

    def close(self) -> str:
        """Stop everything; the exporter's output."""
        self.http.close()
        output = self.exporter.stop()
        for sim in self.sims.values():
            sim.stop()
        return output

    # --- the config ---------------------------------------------------------------------

    def _add_target(self, name: str, app: str) -> None:
        sim = self.sims[app]
        self.entries[name] = {
            "name": name,
            "base_url": sim.url,
            "app_key": sim.config.app_key,
            "app_secret": sim.config.app_secret,
            "per_phone_metrics": name.endswith("1"),
        }
        self.tracked[name] = Tracked(app)

    def _write_config(self) -> None:
        targets = list(self.entries.values())
        if self.budget:
            alpha = [t for t in targets if t["app_key"] == "key-alpha"]
            for target in alpha:
                target["requests_per_second"] = self.budget
        config = {"defaults": {"timeout_seconds": 10}, "targets": targets}
        self.config.write_text(yaml.safe_dump(config))

    def _reload(self, changed: set[str]) -> None:
        self._write_config()
        assert self.http.post("/-/reload").status_code == 200, self.exporter.output[-3000:]
        for name in changed:  # a new collector: a new baseline, counters from 0; its last
            old = self.tracked[name]  # success stays the name's (not a success of its own)
            self.tracked[name] = Tracked(old.app, last_success=old.last_success)

    # --- the steps ------------------------------------------------------------------------

    def step(self, index: int) -> None:
        """One random step, then the invariants; AssertionError says which and where."""
        actions: list[tuple[int, Callable[[], str]]] = [
            (6, self.edit),
            (4, self.faults),
            (1, self.revoke),
            (2, self.reload),
            (12, self.round),
        ]
        if self.check_budget:
            actions.append((2, self.budget_round))
        choice = self.rng.choices([a for _, a in actions], [w for w, _ in actions])[0]
        try:
            said = choice()
        except AssertionError as err:
            recent = "\n  ".join(self.taken[-12:])
            raise AssertionError(
                f"seed {self.seed}, step {index} ({choice.__name__}): {err}\n"
                f"last steps:\n  {recent}"
            ) from None
        self.steps[choice.__name__] += 1
        self.taken.append(f"{index}: {said}")

    def edit(self) -> str:
        app = self.rng.choice(list(self.sims))
        sim, action = (
            self.sims[app],
            self.rng.choice(["suspend", "register", "flap"] * 2 + ["remove", "add", "move"]),
        )
        count = self.rng.randint(1, 6)
        options: dict[str, str] = {}
        tenants = sorted({tenant for tenant, _ in roster(sim).values()})
        if action == "move":
            options = {
                "tenant": self.rng.choice(tenants),
                "to": self.rng.choice(["t-new", *tenants]),
            }
        elif action == "add" and self.rng.random() < 0.3:
            options = {"tenant": "t-new"}
        try:
            sim.change_phones(action, count, **options)
        except ValueError:  # not that many phones of that kind: nothing changed
            return f"edit {app}: {action} {count} {options} refused"
        return f"edit {app}: {action} {count} {options}"

    def faults(self) -> str:
        app = self.rng.choice(list(self.sims))
        sim = self.sims[app]
        pages = max(2, math.ceil(sim.config.phones / 100))
        chosen = [self.rng.choice(FAULTS)(self.rng, pages) for _ in range(self.rng.randint(0, 2))]
        sim.set_faults(chosen)
        return f"faults {app}: {[f.to_dict() for f in chosen]}"

    def revoke(self) -> str:
        app = self.rng.choice(list(self.sims))
        self.sims[app].expire_tokens()
        self.revoked.add(app)
        return f"tokens of {app} revoked"

    def reload(self) -> str:
        kind = self.rng.choice(["same", "setting", "setting", "add", "remove", "budget"])
        changed: set[str] = set()
        if kind == "setting":
            name = self.rng.choice(list(self.entries))
            key, value = self.rng.choice(
                [
                    ("page_size", self.rng.choice([50, 100])),
                    ("max_concurrency", self.rng.randint(1, 4)),
                    ("timeout_seconds", self.rng.choice([5, 10])),
                    ("cache_ttl_seconds", self.rng.choice([0, 1.5])),
                ]
            )
            if self.entries[name].get(key, DEFAULTS[key]) != value:  # else the same target
                self.entries[name][key] = value
                changed.add(name)
            kind = f"{name}.{key} = {value}"
        elif kind == "add" and "alpha9" not in self.entries:
            self._add_target("alpha9", "alpha")
        elif kind == "remove" and "alpha9" in self.entries:
            del self.entries["alpha9"]
            del self.tracked["alpha9"]  # its series leave with it, and start again at 0
            self.monotone = {
                k: v for k, v in self.monotone.items() if ("target", "alpha9") not in k[1]
            }
        elif kind == "budget":
            self.budget = 0.0 if self.budget else float(self.rng.choice([20, 40, 80]))
            changed = {n for n, e in self.entries.items() if e["app_key"] == "key-alpha"}
            for name in changed:
                self.entries[name].pop("requests_per_second", None)
            kind = f"requests_per_second {self.budget:g} on alpha"
        self._reload(changed)
        return f"reload: {kind}"

    def round(self) -> str:
        """Concurrent requests with random timeouts, then every invariant."""
        names = list(self.entries)
        rosters = {app: roster(sim) for app, sim in self.sims.items()}
        asks: list[tuple[str, float | None, list[str]]] = []
        for _ in range(self.rng.randint(1, 4)):
            timeout = self.rng.choice([0.05, 0.3, 0.6, 1.0, 1.5, 2.5])
            target = self.rng.choice(names)
            kind = self.rng.choice(["metrics", "metrics", "probe", "probe", "debug", "page"])
            if kind == "metrics":
                asks.append(("/metrics", timeout, names))
            elif kind == "probe":
                asks.append((f"/probe?target={target}", timeout, [target]))
            elif kind == "debug":
                asks.append((f"/probe?target={target}&debug=true", timeout, []))
            else:
                asks.append((self.rng.choice(["/", "/sd"]), None, []))
        started = time.monotonic()
        with ThreadPoolExecutor(len(asks)) as pool:
            answers = list(pool.map(lambda ask: self._ask(*ask), asks))
        longest = max((t for _, t, _ in asks if t is not None), default=0.0)
        time.sleep(max(0.0, started + longest + 0.3 - time.monotonic()))  # collections end
        self._check(answers, rosters, started)
        shown = ", ".join(f"{a.path} {a.timeout}s: {a.seconds:.2f}s" for a in answers)
        return f"round: {shown}"

    def budget_round(self) -> str:
        """The budget invariant: a rate budget on the first app that fits k of its targets'
        whole collections in one scrape's timeout; no fault; k at least 0.8 k up."""
        alpha = [n for n, e in self.entries.items() if e["app_key"] == "key-alpha"]
        phones = self.sims["alpha"].config.phones
        pages = max(math.ceil(phones / self.entries[n].get("page_size", 100)) for n in alpha)
        timeout, k = 3.0, self.rng.randint(1, max(1, len(alpha) - 1))
        budget = round((k * pages + 1) / (timeout - 0.5), 2)  # k collections and a token
        if budget != self.budget:  # else the same targets: their collectors are kept
            self.budget = budget
            self._reload(set(alpha))
        for sim in self.sims.values():
            sim.clear_faults()
        # A target learns its size from its first page, served ahead of the others: the
        # promise holds once each has been read (the size outlives a reload), and while the
        # app's token is live (a revoked one costs each collection a renewal and a retry).
        promised = "alpha" not in self.revoked and all(
            self.tracked[name].last_success is not None for name in alpha
        )
        answer = self._ask("/metrics", timeout, list(self.entries))
        ups = {labels["target"]: v for labels, v in samples_named(answer.text, "cec_up")}
        up = sum(1 for name in alpha if ups.get(name) == 1)
        self.checked["budget"] += int(promised)
        assert up >= 0.8 * k or not promised, (
            f"requests_per_second {self.budget:g} fits {k} collections of {pages} pages in "
            f"{timeout}s: {up} of {len(alpha)} targets up, wanted {0.8 * k:.1f}"
        )
        time.sleep(timeout)  # the collections still running end before the next step
        self._learn({app: roster(sim) for app, sim in self.sims.items()})
        return f"budget round: {up} of {len(alpha)} up, {k} fit"

    # --- answers and invariants ---------------------------------------------------------------

    def _ask(self, path: str, timeout: float | None, targets: list[str]) -> Answer:
        headers = {TIMEOUT_HEADER: repr(timeout)} if timeout is not None else {}
        started = time.monotonic()
        response = self.http.get(path, headers=headers)
        return Answer(
            path, timeout, time.monotonic() - started, response.status_code, response.text, targets
        )

    def _settled(self) -> dict[str, float | None]:
        """Each target's last success, read without starting a collection."""
        text = self.http.get("/metrics", headers={TIMEOUT_HEADER: SETTLE}).text
        found = {
            labels["target"]: value
            for labels, value in samples_named(text, "cec_last_success_timestamp_seconds")
        }
        return {name: found.get(name) for name in self.entries}

    def _check(self, answers: list[Answer], rosters: dict[str, Roster], started: float) -> None:
        self._learn(rosters)
        for answer in answers:
            self._check_secrets(answer.text, answer.path)
            assert answer.status == 200, f"{answer.path}: HTTP {answer.status}: {answer.text[:300]}"
            if answer.timeout is not None and answer.timeout >= 0.5:
                self.checked["in time"] += 1
                assert answer.seconds < answer.timeout, (
                    f"{answer.path} answered in {answer.seconds:.3f}s, timeout {answer.timeout}s"
                )
            if answer.targets:
                self._check_scrape(answer, rosters)
        self._check_monotone([a.text for a in answers if a.targets])
        lines = self.exporter.lines[self.logged :]
        self.logged += len(lines)
        self._check_secrets("\n".join(lines), "the log")

    def _learn(self, rosters: dict[str, Roster]) -> None:
        """A success since the last round saw this round's roster: count its changes."""
        for name, last in self._settled().items():
            tracked = self.tracked[name]
            if last is None or last == tracked.last_success:
                continue
            now = rosters[tracked.app]
            self.revoked.discard(tracked.app)  # a success: the app's token is a live one
            if tracked.baseline is not None:
                tracked.counts = tracked.counts + changes_between(tracked.baseline, now)
            tracked.baseline, tracked.last_success = now, last
            tracked.seen[last] = (now, Counter(tracked.counts))

    def _check_scrape(self, answer: Answer, rosters: dict[str, Roster]) -> None:
        samples = parse_samples(answer.text)
        ups = {labels["target"]: value for labels, value in samples_named(answer.text, "cec_up")}
        self.checked["up for all"] += 1
        assert set(ups) == set(answer.targets), f"{answer.path}: cec_up for {sorted(ups)}"
        for name in answer.targets:
            tracked = self.tracked[name]
            if not ups[name]:
                self.checked["down is bare"] += 1
                assert not softphone_counts(answer.text, name), f"{name} down shows counts"
                continue
            last = samples.get(
                ("cec_last_success_timestamp_seconds", frozenset({("target", name)}))
            )
            # Its own success's roster (an earlier one for an answer from the cache).
            expected, want = tracked.seen.get(last or -1.0, (rosters[tracked.app], tracked.counts))
            tally = Counter((tenant, status) for tenant, status in expected.values())
            shown = softphone_counts(answer.text, name)
            self.checked["counts"] += 1
            assert shown == {k: float(n) for k, n in tally.items()}, (
                f"{answer.path}: {name} counts {shown}, the roster's {dict(tally)}"
            )
            allocated = samples.get(("cec_softphones_allocated", frozenset({("target", name)})))
            assert allocated == len(expected), (
                f"{name}: allocated {allocated}, roster {len(expected)}"
            )
            if self.entries[name].get("per_phone_metrics"):
                self._check_phones(answer.text, name, expected)
            self.checked["changes"] += 1
            assert counters(answer.text, name) == want, (
                f"{answer.path}: {name} change counters {dict(counters(answer.text, name))}, "
                f"the rosters' differences {dict(want)}"
            )

    def _check_phones(self, text: str, name: str, expected: Roster) -> None:
        shown = {
            (labels["tenant_id"], labels["phone_num"]): value
            for labels, value in samples_named(text, "cec_softphone_registered")
            if labels["target"] == name
        }
        want = {
            (tenant, number): float(status == "registered")
            for (_, number), (tenant, status) in expected.items()
        }
        self.checked["counts"] += 1
        assert shown == want, f"{name}: per-phone series differ from the roster"

    def _check_monotone(self, texts: list[str]) -> None:
        """No counter below what an earlier round showed (a round's answers are concurrent:
        among them, any order)."""
        highest: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for text in texts:
            for (metric, labels), value in parse_samples(text).items():
                target = dict(labels).get("target")
                if not metric.endswith("_total") or target not in self.entries:
                    continue
                if metric.startswith("cec_softphone_"):
                    continue  # the change counters restart with a reload that changes the target
                key = (metric, labels)
                held = self.monotone.get(key, 0.0)
                self.checked["monotone"] += 1
                assert value >= held, f"{metric}{dict(labels)} went down: {held} -> {value}"
                highest[key] = max(value, highest.get(key, 0.0))
        self.monotone.update(highest)

    def _check_secrets(self, text: str, where: str) -> None:
        secrets = set(SECRETS.values())
        secrets.update(token for sim in self.sims.values() for token in sim.issued_tokens())
        self.checked["no secret"] += 1
        for secret in secrets:
            for form in secret_forms(secret):
                assert form not in text, f"a secret ({form[:6]}...) in {where}"
        assert PASSWORD_PREFIX not in text, f"a phone password in {where}"
