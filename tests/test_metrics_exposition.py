"""The request metrics (app/request_metrics.py) expose exactly what
prometheus-client's own Counter and Histogram expose for the same
observations: names, HELP and TYPE lines, labels, bucket bounds, values and
the order of the series. Only the ``_created`` times may differ (each side
takes its own clock reading); they are compared apart."""

from __future__ import annotations

import re
import threading
import warnings

from falcon import testing
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.app import create_app
from app.observability import LATENCY_BUCKETS, ObservabilityMiddleware
from app.request_metrics import FOLD_AT, RequestMetrics

REQUESTS = ("karmchari_http_requests", "HTTP requests")
LATENCY = ("karmchari_http_request_duration_seconds", "Time to answer a request")
CREATED = re.compile(r"^(\S+_created\S*) (\S+)$", re.MULTILINE)


class Reference:
    """The same two metrics kept by prometheus-client, as before the change."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(*REQUESTS, ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram(*LATENCY, ["route", "method"], registry=self.registry,
                                 buckets=LATENCY_BUCKETS)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)


def lean() -> tuple[CollectorRegistry, RequestMetrics]:
    registry = CollectorRegistry()
    metrics = RequestMetrics(REQUESTS, LATENCY, LATENCY_BUCKETS)
    registry.register(metrics)
    return registry, metrics


def without_created(text: str) -> tuple[str, list[float]]:
    """The exposition with each ``_created`` value replaced, and those values."""
    return CREATED.sub(r"\1 T", text), [float(v) for _, v in CREATED.findall(text)]


def assert_same_exposition(ours: CollectorRegistry, reference: CollectorRegistry) -> None:
    our_text, our_created = without_created(generate_latest(ours).decode())
    their_text, their_created = without_created(generate_latest(reference).decode())
    assert our_text == their_text
    assert len(our_created) == len(their_created)
    # Each series was created at its first observation, on either side.
    for ours_at, theirs_at in zip(our_created, their_created, strict=True):
        assert abs(ours_at - theirs_at) < 60


ROUTES = st.sampled_from(["/jobState", "/v1/jobs", "/v1/jobs/{job_id}", "unmatched"])
METHODS = st.sampled_from(["GET", "POST", "other"])
STATUSES = st.sampled_from([200, 201, 304, 400, 404, 503])
# Every bound exactly, just above and below it, zero, and anything in between.
EDGES = [edge for bound in LATENCY_BUCKETS for edge in (bound, bound * 1.0000001,
                                                        bound * 0.9999999)]
SECONDS = st.sampled_from([0.0, *EDGES, 61.0, 1e6]) | st.floats(0, 100, allow_nan=False)
OBSERVATION = st.tuples(ROUTES, METHODS, STATUSES, SECONDS)


@settings(max_examples=200, deadline=None)
@given(st.lists(OBSERVATION, max_size=60), st.integers(0, 60))
def test_the_same_exposition_as_prometheus_client(observations, scrape_at):
    registry, metrics = lean()
    reference = Reference()
    for index, observation in enumerate(observations):
        if index == scrape_at:  # a scrape between observations changes nothing
            generate_latest(registry)
        metrics.observe(*observation)
        reference.observe(*observation)
    assert_same_exposition(registry, reference.registry)


def test_the_same_exposition_past_the_fold_in_the_request_path():
    """Past FOLD_AT queued observations a request folds them itself."""
    registry, metrics = lean()
    reference = Reference()
    for n in range(FOLD_AT * 2 + 7):
        observation = ("/v1/jobs", "GET", 200 if n % 3 else 404, (n % 97) / 1000)
        metrics.observe(*observation)
        reference.observe(*observation)
    assert len(metrics._queue) < FOLD_AT
    assert_same_exposition(registry, reference.registry)


def test_no_observation_lost_between_threads_and_scrapes():
    registry, metrics = lean()
    threads, each = 8, 3000

    def observe(thread: int) -> None:
        for _ in range(each):
            metrics.observe("/jobState", "GET", 200 + thread % 2, 0.002)

    def scrape_until_done() -> None:
        while any(t.is_alive() for t in workers):
            generate_latest(registry)

    workers = [threading.Thread(target=observe, args=(t,)) for t in range(threads)]
    scraper = threading.Thread(target=scrape_until_done)
    for t in workers:
        t.start()
    scraper.start()
    for t in [*workers, scraper]:
        t.join(60)
    families = {f.name: f for f in text_string_to_metric_families(
        generate_latest(registry).decode())}
    totals = {s.labels["status"]: s.value for s in families["karmchari_http_requests"].samples
              if s.name.endswith("_total")}
    assert totals == {"200": threads // 2 * each, "201": threads // 2 * each}
    latency = {s.name: s.value for s in families[LATENCY[0]].samples
               if s.labels.get("le") in (None, "0.0025")}
    assert latency[LATENCY[0] + "_count"] == threads * each
    assert latency[LATENCY[0] + "_bucket"] == threads * each


def test_the_served_metrics_are_what_prometheus_client_would_show(config, store):
    """The whole app on a real Redis: every observation the middleware makes is
    also given to prometheus-client's own metrics; /metrics shows the same."""
    app = create_app(config, store)
    middleware = next(m for m in app._unprepared_middleware
                      if isinstance(m, ObservabilityMiddleware))
    reference = Reference()
    observe = middleware._observe

    def both(route: str, method: str, status: int, seconds: float) -> None:
        observe(route, method, status, seconds)
        reference.observe(route, method, status, seconds)

    middleware._observe = both
    client = testing.TestClient(app)
    job_id = client.simulate_post("/v1/jobs", json={"type": "teams"}).json["id"]
    for _ in range(3):
        assert client.simulate_get("/jobState", params={"id": job_id}).status_code == 200
    assert client.simulate_get(f"/v1/jobs/{'0' * 32}").status_code == 404
    assert client.simulate_get("/no/such/route").status_code == 404
    with warnings.catch_warnings():  # the WSGI validator's, about the made-up method
        warnings.simplefilter("ignore")
        assert client.simulate_request("BREW", "/v1/jobs").status_code == 400
    assert client.simulate_post(f"/v1/jobs/{job_id}/commands",
                                json={"command": "pause"}).status_code == 200
    # The scrape's own request is counted once it is answered: not in its answer.
    reference_text = generate_latest(reference.registry).decode()
    text = client.simulate_get("/metrics").text
    ours = "".join(f"{line}\n" for line in text.splitlines()
                   if REQUESTS[0] in line or LATENCY[0] in line)
    our_text, our_created = without_created(ours)
    their_text, their_created = without_created(reference_text)
    assert our_text == their_text
    assert 'method="GET",route="/jobState",status="200"} 3.0' in our_text
    assert 'method="other",route="/v1/jobs",status="400"} 1.0' in our_text
    assert len(our_created) == len(their_created)
