"""The status page's server against a real Redis: page, script, state JSON (nodes, jobs, rounds), refusals,
and nothing of the connection settings (password) in anything it serves."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from xfed.broker.heartbeat import Heartbeat
from xfed.broker.jobrecord import JobState
from xfed.broker.jobstore import JobStore
from xfed.broker.keys import Keys
from xfed.node.events import EventReporter
from xfed.web.server import make_server

pytestmark = pytest.mark.integration
PASSWORD = "s3cret-pw-xyz"


@pytest.fixture
def page(redis_factory, tmp_path):
    srv = redis_factory(extra_args=["--requirepass", PASSWORD])
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "fed_conf.json").write_text(json.dumps({
        "fed_info": {"scheduler": {"scheduler": "x:1"}, "trainer": {"n1": "x:1", "n2": "x:1"},
                     "assist_trainer": {"agg": "x:1"}},
        "redis_server": f"redis://:{PASSWORD}@{srv.address}/0", "redis": {"namespace": "web"}}))
    r = srv.client(password=PASSWORD)
    keys = Keys("web")
    server = make_server(str(cfg), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield base, r, keys
    finally:
        server.shutdown()
        server.server_close()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as res:
            return res.status, res.headers.get("Content-Type", ""), res.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def test_state_lists_nodes_jobs_and_rounds_without_credentials(page):
    base, r, keys = page
    hb = Heartbeat(r, keys, "n1", "label_trainer", interval=5.0).start()
    try:
        store = JobStore(r, keys)
        job = store.create(["n1", "n2", "agg"])
        store.transition(job, JobState.RUNNING, stage=0)
        for node in ("n1", "agg"):
            for rnd in (1, 2):
                EventReporter(r, keys, job, node, 0).report("metrics", {"round": rnd, "rounds": 3, "node": node,
                                                                        "train_loss": 1.0 / rnd})
        EventReporter(r, keys, job, "n2", 0).report("metrics", {"round": 1, "rounds": 3, "node": "n2"})
        status, ctype, body = get(base + "/api/state")
        assert status == 200 and ctype == "application/json"
        state = json.loads(body)
        nodes = {n["node"]: n for n in state["nodes"]}
        assert nodes["n1"]["alive"] is True and nodes["n1"]["pid"] and nodes["n2"]["alive"] is False
        assert nodes["scheduler"]["alive"] is False
        assert state["job"]["job"] == job and state["job"]["state"] == "RUNNING"
        assert len(state["rounds"]) == 5 and state["rounds_done"] == 1 and state["rounds_total"] == 3  # n2 lags
        EventReporter(r, keys, job, "n2", 0).report("metrics", {"round": 2, "rounds": 3, "node": "n2"})
        assert json.loads(get(base + "/api/state")[2])["rounds_done"] == 2  # read on from the last event seen
        everything = body + get(base + "/")[2] + get(base + "/app.js")[2]
        assert PASSWORD not in everything and "redis://" not in everything
    finally:
        hb.stop()


def test_page_script_and_refusals(page):
    base, _, _ = page
    status, ctype, html = get(base + "/")
    assert status == 200 and ctype.startswith("text/html") and 'src="app.js"' in html and 'id="rounds-done"' in html
    assert get(base + "/app.js")[0] == 200
    assert get(base + "/nope")[0] == 404
    assert get(base + "/api/state?job=../../x")[0] == 400
    state = json.loads(get(base + "/api/state?job=999")[2])
    assert state["job"] is None and state["rounds"] == []
    req = urllib.request.Request(base + "/api/state", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 501  # read-only: GET only
