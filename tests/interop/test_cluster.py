"""Issue 14: several rsvault nodes on one PostgreSQL, driven by the unmodified Azure Python SDK.

Two `rsvault serve` processes share a fresh PostgreSQL database (the private cluster `scripts/test`
starts), one server key (the first node's `engine.key`), one certificate (the first node's, which names
127.0.0.1) and one public URL: a round-robin TCP load balancer in this file. The SDK's clients send
`Connection: close`, so each request opens a new connection and the balancer alternates nodes request by
request. Vaults live in the S3 store the test command starts (Garage), which every node reaches.

What is proven, against real processes:
* the seed flow (vault, VM, protection, backup, job polling, recovery points, restore byte for byte) with
  requests alternating between the nodes;
* two backups of one vault triggered at once through different nodes never run at the same time (the
  per-vault limit is counted in the store);
* a job running on one node is cancelled through the other;
* `kill -9` of the node running a backup: the survivor settles the job once its lease lapses, a new backup
  completes on the survivor, and stock `restic check` finds the vault clean.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from azure.mgmt.recoveryservices import RecoveryServicesClient
from azure.mgmt.recoveryservices import models as rsm
from azure.mgmt.recoveryservicesbackup import RecoveryServicesBackupClient
from azure.mgmt.recoveryservicesbackup import models as bm
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.resources.models import GenericResource

from conftest import LOCATION, Server, _bin_path, _grants, _stop, _storage_file
from test_sdk_backup import STORAGE_API, VM_API, trigger, unique, wait_job

LEASE_SECS = 3
NODE_RE = re.compile(r"^node (\S+) at 127\.0\.0\.1:(\d+)")


class RoundRobin:
    """A TCP load balancer: each accepted connection goes to the next node that accepts a connection
    (a stopped node is skipped, as a load balancer's health check would)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.backends: list[int] = []
        self.served: dict[int, int] = {}
        self.next = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _pick(self):
        with self.lock:
            order = [self.backends[(self.next + i) % len(self.backends)] for i in range(len(self.backends))]
            self.next += 1
        for port in order:
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                continue
            with self.lock:
                self.served[port] = self.served.get(port, 0) + 1
            return upstream
        return None

    def _serve(self, client):
        upstream = self._pick()
        if upstream is None:
            client.close()
            return

        def pipe(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)


def psql(url: str, sql: str) -> str:
    return subprocess.run(["psql", url, "-XAtq", "-c", sql], check=True, capture_output=True, text=True).stdout.strip()


def fresh_database(admin_url: str) -> str:
    name = f"cluster_{uuid.uuid4().hex[:8]}"
    psql(admin_url, f"CREATE DATABASE {name}")
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


class Node:
    def __init__(self, name: str, base: Path, args: list[str]):
        self.name, self.base = name, base
        self.data_dir = base / "data"
        self.data_dir.mkdir(parents=True)
        self.log_file = base / "server.log"
        self.log = open(self.log_file, "wb")
        self.proc = subprocess.Popen(
            [str(_bin_path()), "serve", "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=self.log, cwd=base,
        )
        ready = threading.Event()
        found = {}

        def pump():
            for raw in self.proc.stdout:
                self.log.write(b"[stdout] " + raw)
                self.log.flush()
                line = raw.decode("utf-8", "replace")
                if m := NODE_RE.search(line):
                    found.update(id=m.group(1), port=int(m.group(2)))
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 60
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _stop(self.proc)
                pytest.fail(f"node {name} did not start:\n{self.log_file.read_text(errors='replace')[-4000:]}")
        # The node's own address (the ready line names the public URL, the third line the node).
        self.id, self.port = found["id"], found["port"]

    def stop(self):
        _stop(self.proc)
        self.log.close()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def start_cluster(tmp_path_factory, name: str, n: int, extra: list[str], roles: list[str] | None = None):
    """`n` nodes on a fresh database, vaults in S3, behind a round-robin balancer (node i with
    `--role roles[i]`, default all); returns the cluster and a function that stops it."""
    roles = roles or ["all"] * n
    admin = os.environ.get("RSVAULT_TEST_PG_URL")
    if not admin:
        if os.environ.get("RSVAULT_TEST_PG_REQUIRED") == "1":
            pytest.fail("RSVAULT_TEST_PG_URL is not set: run the tests through scripts/test")
        pytest.skip("no PostgreSQL (scripts/test starts one)")
    base = tmp_path_factory.mktemp(name)
    storage = _storage_file(base)
    url = fresh_database(admin)
    lb = RoundRobin()
    public = f"https://127.0.0.1:{lb.port}"
    store_file = base / "store-url"
    store_file.write_text(url)
    store_file.chmod(0o600)
    common = ["--store-file", str(store_file), "--storage", str(storage), "--public-url", public,
              "--job-lease", str(LEASE_SECS), "--max-jobs", "2", "--vault-jobs", "1", *extra, *_grants(tmp_path_factory)]
    first = Node("a", base / "a", [*common, "--role", roles[0]])
    # The others: the first node's server key and certificate (it names 127.0.0.1).
    shared = ["--server-key", str(first.data_dir / "engine.key"),
              "--tls-cert", str(first.data_dir / "server.pem"), "--tls-key", str(first.data_dir / "server-key.pem")]
    nodes = [first] + [Node(chr(ord("a") + i), base / chr(ord("a") + i), [*common, *shared, "--role", roles[i]])
                       for i in range(1, n)]
    lb.backends = [node.port for node in nodes]
    boot = json.loads((first.data_dir / "bootstrap.json").read_text())
    srv = Server(url=public, tenant_id=boot["tenantId"], subscription_id=boot["subscriptionId"], client_id=boot["clientId"],
                 client_secret=boot["clientSecret"], ca_file=str(first.data_dir / "ca.pem"), data_dir=first.data_dir,
                 traffic_dir=base, log_file=first.log_file, storage_file=storage)

    def stop():
        for node in nodes:
            if node.proc.poll() is None:
                node.stop()

    return dict(server=srv, lb=lb, nodes={node.id: node for node in nodes}, list=nodes, a=nodes[0], b=nodes[1],
                url=url, storage=storage, store_file=store_file), stop


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c, stop = start_cluster(tmp_path_factory, "cluster", 2, [])
    try:
        yield c
    finally:
        stop()


def clients(srv: Server):
    # `Connection: close` on every request: the balancer picks a node per request.
    kw = {"headers": {"Connection": "close"}}
    return srv.client(ResourceManagementClient, **kw), srv.client(RecoveryServicesClient, **kw), srv.client(RecoveryServicesBackupClient, **kw)


def direct_client(srv: Server, node: Node):
    """A backup client talking to one node only (its own address; the certificate names 127.0.0.1)."""
    return RecoveryServicesBackupClient(srv.credential(), srv.subscription_id, base_url=f"https://127.0.0.1:{node.port}",
                                        connection_verify=srv.ca_file, credential_scopes=["https://management.azure.com/.default"])


def protected_vm(cluster, tmp_path_factory, rm, bk, group, vault, size_mib: int):
    srv = cluster["server"]
    disks = tmp_path_factory.mktemp("cluster-disks")
    os_disk = disks / "os.raw"
    with open(os_disk, "wb") as f:
        for _ in range(size_mib // 4):
            f.write(os.urandom(4 << 20))
    vm = unique("vm")
    vm_id = f"/subscriptions/{srv.subscription_id}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{vm}"
    rm.resources.begin_create_or_update_by_id(
        vm_id,
        GenericResource(location=LOCATION, properties={"storageProfile": {"osDisk": {"osType": "Linux", "vhd": {"uri": os_disk.as_uri()}}}}),
        api_version=VM_API,
    ).result()
    container = f"IaasVMContainer;iaasvmcontainerv2;{group};{vm}"
    item = f"VM;iaasvmcontainerv2;{group};{vm}"
    policy = bk.protection_policies.get(vault, group, "DefaultPolicy").id
    bk.protected_items.begin_create_or_update(
        vault, group, "Azure", container, item,
        bm.ProtectedItemResource(properties=bm.AzureIaaSComputeVMProtectedItem(source_resource_id=vm_id, policy_id=policy)),
    ).result()
    return dict(vm=vm, vm_id=vm_id, container=container, item=item, os_disk=os_disk)


def new_vault(rm, rs):
    group, vault = unique("cluster-"), unique("vault-")
    rm.resource_groups.create_or_update(group, {"location": LOCATION})
    rs.vaults.begin_create_or_update(group, vault, rsm.Vault(location=LOCATION, sku=rsm.Sku(name="Standard"))).result()
    return group, vault


def start_backup(bk, group, vault, vm) -> str:
    headers = trigger(bk, vault, group, "Azure", vm["container"], vm["item"],
                      bm.BackupRequestResource(properties=bm.IaasVMBackupRequest()))
    op_id = headers["azure-asyncoperation"].split("/operationsStatus/")[1].split("?")[0]
    return bk.backup_operation_statuses.get(vault, group, op_id).properties.job_id


def lease_of(cluster, job_id: str) -> str | None:
    """The node holding a job's lease, read from the store (`job_leases`)."""
    out = psql(cluster["url"], f"SELECT node FROM job_leases WHERE job_key LIKE '%/backupjobs/{job_id.lower()}'")
    return out or None


def wait_running(cluster, job_id: str, timeout=60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if node := lease_of(cluster, job_id):
            return node
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never ran")


def test_the_seed_flow_alternating_between_two_nodes(cluster, tmp_path_factory):
    srv, lb = cluster["server"], cluster["lb"]
    before = dict(lb.served)
    rm, rs, bk = clients(srv)
    group, vault = new_vault(rm, rs)
    vm = protected_vm(cluster, tmp_path_factory, rm, bk, group, vault, 8)
    target = tmp_path_factory.mktemp("cluster-restores")
    acct = unique("sa")
    acct_id = f"/subscriptions/{srv.subscription_id}/resourceGroups/{group}/providers/Microsoft.Storage/storageAccounts/{acct}"
    rm.resources.begin_create_or_update_by_id(
        acct_id, GenericResource(location=LOCATION, kind="StorageV2", tags={"rsvault-path": str(target)}), api_version=STORAGE_API
    ).result()

    job_id = start_backup(bk, group, vault, vm)
    _, job = wait_job(bk, vault, group, job_id)
    assert job.properties.status == "Completed", job.properties.error_details
    rps = list(bk.recovery_points.list(vault, group, "Azure", vm["container"], vm["item"]))
    assert len(rps) == 1
    bk.restores.begin_trigger(
        vault, group, "Azure", vm["container"], vm["item"], rps[0].name,
        bm.RestoreRequestResource(properties=bm.IaasVMRestoreRequest(
            recovery_point_id=rps[0].name, recovery_type="RestoreDisks", source_resource_id=vm["vm_id"],
            storage_account_id=acct_id, region=LOCATION, create_new_cloud_service=False, original_storage_account_option=False)),
    ).result()
    restore = list(bk.backup_jobs.list(vault, group, filter="operation eq 'Restore'"))[0]
    _, rjob = wait_job(bk, vault, group, restore.name)
    assert rjob.properties.status == "Completed", rjob.properties.error_details
    images = [p for p in Path(target).rglob("*") if p.is_file() and p.suffix != ".json"]
    assert len(images) == 1 and images[0].read_bytes() == vm["os_disk"].read_bytes()

    served = {port: lb.served.get(port, 0) - before.get(port, 0) for port in lb.backends}
    assert all(n >= 10 for n in served.values()), f"both nodes served the flow: {served}"
    nodes = psql(cluster["url"], "SELECT node FROM nodes ORDER BY node").split()
    assert sorted(nodes) == sorted(cluster["nodes"]), "both nodes report themselves in the store"


def test_backups_of_one_vault_triggered_through_both_nodes_never_overlap(cluster, tmp_path_factory):
    srv = cluster["server"]
    rm, rs, bk = clients(srv)
    group, vault = new_vault(rm, rs)
    vms = [protected_vm(cluster, tmp_path_factory, rm, bk, group, vault, 64) for _ in range(3)]
    a, b = direct_client(srv, cluster["a"]), direct_client(srv, cluster["b"])
    jobs = [start_backup(c, group, vault, vm) for c, vm in zip([a, b, a], vms)]
    windows = []
    for j in jobs:
        _, job = wait_job(bk, vault, group, j, timeout=300)
        assert job.properties.status == "Completed", job.properties.error_details
        tasks = job.properties.extended_info.tasks_list
        windows.append((tasks[0].start_time, tasks[-1].end_time))
    windows.sort()
    for (_, end), (start, _) in zip(windows, windows[1:]):
        assert start >= end, f"two backups of one vault ran at once: {windows}"


@pytest.fixture(scope="module")
def big_vm(cluster, tmp_path_factory):
    """A vault with a VM whose 768 MiB disk takes a few seconds to back up: long enough to act on a
    running job."""
    rm, rs, bk = clients(cluster["server"])
    group, vault = new_vault(rm, rs)
    return dict(bk=bk, group=group, vault=vault, vm=protected_vm(cluster, tmp_path_factory, rm, bk, group, vault, 768))


def running_backup(cluster, big_vm):
    """Triggers a backup of `big_vm` and waits until a node runs it; returns the job id and that node."""
    job_id = start_backup(big_vm["bk"], big_vm["group"], big_vm["vault"], big_vm["vm"])
    return job_id, wait_running(cluster, job_id)


def test_a_job_running_on_one_node_is_cancelled_through_the_other(cluster, big_vm):
    srv, bk, group, vault, vm = cluster["server"], big_vm["bk"], big_vm["group"], big_vm["vault"], big_vm["vm"]
    job_id, runner = running_backup(cluster, big_vm)
    other = next(n for nid, n in cluster["nodes"].items() if nid != runner)
    direct_client(srv, other).job_cancellations.trigger(vault, group, job_id)
    _, job = wait_job(bk, vault, group, job_id, timeout=120)
    assert job.properties.status == "Cancelled", (job.properties.status, job.properties.error_details)
    assert not list(bk.recovery_points.list(vault, group, "Azure", vm["container"], vm["item"])), "a cancelled backup made no point"


def test_a_node_killed_mid_backup_has_its_job_settled_by_the_survivor(cluster, big_vm):
    srv, bk, group, vault, vm = cluster["server"], big_vm["bk"], big_vm["group"], big_vm["vault"], big_vm["vm"]
    job_id, runner = running_backup(cluster, big_vm)
    # Mid-transfer: the job's transfer task has started on the node that holds it.
    deadline = time.time() + 60
    while time.time() < deadline:
        tasks = bk.job_details.get(vault, group, job_id).properties.extended_info.tasks_list
        if tasks[-1].status == "InProgress" or tasks[-1].status == "Completed":
            break
        time.sleep(0.05)
    victim = cluster["nodes"][runner]
    victim.kill()
    _, job = wait_job(bk, vault, group, job_id, timeout=120)
    points = list(bk.recovery_points.list(vault, group, "Azure", vm["container"], vm["item"]))
    if job.properties.status == "Failed":
        err = job.properties.error_details[0]
        assert runner in err.error_string and "stopped while this job ran" in err.error_string, err.error_string
        assert not points, "a failed backup shows no recovery point"
    else:  # killed after the snapshot was committed: completed from it
        assert job.properties.status == "Completed", job.properties.status
        assert len(points) == 1
    # The survivor runs the next backup, and the vault is clean for stock restic.
    again = start_backup(bk, group, vault, vm)
    _, job2 = wait_job(bk, vault, group, again, timeout=300)
    assert job2.properties.status == "Completed", job2.properties.error_details
    survivor = next(n for nid, n in cluster["nodes"].items() if nid != runner)
    vault_id = f"/subscriptions/{srv.subscription_id}/resourceGroups/{group}/providers/Microsoft.RecoveryServices/vaults/{vault}"
    out = subprocess.run(
        [str(_bin_path()), "restic-env", "--store-file", str(cluster["store_file"]),
         "--data-dir", str(survivor.data_dir), "--vault", vault_id, "--storage", str(cluster["storage"]),
         "--server-key", str(cluster["a"].data_dir / "engine.key")],
        check=True, capture_output=True, text=True).stdout
    renv = dict(os.environ)
    for line in out.splitlines():
        k, v = line.split("=", 1)
        renv[k] = v.strip("'")
    check = subprocess.run(["restic", "check", "--no-cache"], env=renv, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    snaps = json.loads(subprocess.run(["restic", "snapshots", "--json", "--no-lock", "--no-cache"], env=renv,
                                      check=True, capture_output=True, text=True).stdout)
    assert again in json.dumps(snaps)


@pytest.fixture(scope="module")
def clock_cluster(tmp_path_factory):
    # The first node only serves the API: the jobs its advances queue run on the two others, whose
    # clocks must follow the one it moves.
    c, stop = start_cluster(tmp_path_factory, "clock-cluster", 3, ["--test-clock"], ["api", "all", "all"])
    try:
        yield c
    finally:
        stop()


def advance_on(srv: Server, node: Node, seconds: int) -> dict:
    """`POST /rsvault/admin/clock/advance` sent to one node (its own address)."""
    token = srv.credential().get_token("https://management.azure.com/.default").token
    r = requests.post(f"https://127.0.0.1:{node.port}/rsvault/admin/clock/advance", json={"seconds": seconds},
                      headers={"Authorization": f"Bearer {token}"}, verify=srv.ca_file, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()


def test_three_nodes_through_a_month_on_the_test_clock_run_every_slot_once(clock_cluster, tmp_path_factory):
    c = clock_cluster
    srv = c["server"]
    rm, rs, bk = clients(srv)
    group, vault = new_vault(rm, rs)
    vms = [protected_vm(c, tmp_path_factory, rm, bk, group, vault, 4) for _ in range(2)]
    # A day at a time, each advance sent to the next node: every node moves the shared clock.
    times = [advance_on(srv, c["list"][day % 3], 86_400)["time"] for day in range(30)]
    assert times == sorted(times) and len(set(times)) == 30, times
    jobs = [j for j in bk.backup_jobs.list(vault, group, filter="operation eq 'Backup'")]
    for vm in vms:
        mine = sorted((j.properties for j in jobs if j.properties.entity_friendly_name == vm["vm"]), key=lambda p: p.start_time)
        assert all(p.status == "Completed" and p.is_user_triggered is False for p in mine), [(p.status, p.error_details) for p in mine]
        days = [p.start_time.date() for p in mine]
        assert len(days) >= 29 and len(set(days)) == len(days), f"one scheduled backup per day, none twice: {days}"
        assert all((b - a).days == 1 for a, b in zip(days, days[1:])), f"no day skipped: {days}"
        points = list(bk.recovery_points.list(vault, group, "Azure", vm["container"], vm["item"]))
        assert len(points) == len(mine), (len(points), len(mine))
        # Stamped by whichever node ran the backup: its clock followed the shared one.
        point_days = sorted(p.properties.recovery_point_time.date() for p in points)
        assert point_days == days, (point_days, days)
    assert psql(c["url"], "SELECT count(*) FROM leader_leases WHERE name = 'scheduler'") == "1"
    assert psql(c["url"], "SELECT count(*) FROM nodes") == "3"
