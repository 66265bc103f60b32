"""scripts/redis_acl.py's users on a real 3-master Redis Cluster: applied on every node, and enough
for a cluster client (CLUSTER SLOTS/SHARDS, COMMAND...) while a node still reads only its own mailboxes."""
from __future__ import annotations

import numpy as np
import pytest
import redis

from tests.redis_topologies import ClusterServers, missing_reason

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")]


def test_users_on_every_cluster_node_and_a_node_user_runs_the_data_plane(tmp_path):
    from dataclasses import replace

    from xfed.broker.acl import apply_users, denied_log, federation_users, verify_users
    from xfed.broker.channels import Comm
    from xfed.broker.connection import connect
    from xfed.broker.heartbeat import Heartbeat
    from xfed.broker.jobstore import JobStore
    from xfed.broker.keys import Keys
    from xfed.config import RedisAddress

    cluster = ClusterServers(tmp_path, masters=3).start()
    try:
        admin = cluster.client()
        users = federation_users("acl", ["node-1", "node-2", "assist"])
        apply_users(admin, users)
        assert verify_users(admin, users, "acl") == []
        for n in cluster.nodes:  # ACL users are per server: each node must have them
            plain = redis.Redis(host="127.0.0.1", port=n.port)
            assert {u.name for u in users} <= {u.decode() for u in plain.execute_command("ACL", "USERS")}
        keys, address = Keys("acl"), RedisAddress.parse(cluster.address)
        as_user = {u.subject: connect(replace(address, username=u.name, password=u.password), retry_s=5)
                   for u in users}
        JobStore(as_user["scheduler"], keys).create(["node-1", "node-2", "assist"], job_id="7")
        hb = Heartbeat(as_user["node-1"], keys, "node-1", "label_trainer", interval=0.5).start()
        try:
            one = Comm(as_user["node-1"], keys, "7", 0, "node-1", timeout=10)
            two = Comm(as_user["node-2"], keys, "7", 0, "node-2", timeout=10)
            one.send("node-2", "t", {"x": np.arange(4.0)})
            assert np.array_equal(two.recv("node-1", "t").tensors["x"], np.arange(4.0))
        finally:
            hb.stop()
        assert denied_log(admin) == []
        with pytest.raises(redis.exceptions.NoPermissionError):  # still confined: not node-2's mailbox
            as_user["node-1"].xread({keys.mailbox("7", 0, "node-2", "node-1"): "0"})
    finally:
        cluster.stop()
