"""Issue 18 through the unmodified Azure Python SDK: a running QEMU guest (`qemu-storage-daemon` with a
qcow2 disk, QMP, and a writer changing the disk through an NBD export of the live node) declared as a VM
by its sockets, then the seed flow: enable protection → trigger backup while the writer writes → the job's
"Take Snapshot" task says what happened (guest agent freeze/thaw) → the recovery point is `AppConsistent`
→ RestoreDisks gives the disk exactly as of the snapshot instant → an incremental reads only the chunks
the dirty bitmap marks → a failing guest agent gives a `CrashConsistent` point and a warning →
OriginalLocation is refused while the guest runs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.recoveryservices import RecoveryServicesClient
from azure.mgmt.recoveryservices import models as rsm
from azure.mgmt.recoveryservicesbackup import RecoveryServicesBackupClient
from azure.mgmt.recoveryservicesbackup import models as bm
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.resources.models import GenericResource

from conftest import LOCATION
from test_sdk_backup import STORAGE_API, VM_API, protect_vm, trigger, unique, wait_job

MIB = 1 << 20
SIZE = 64 * MIB
BLOCKS = SIZE // MIB
BLOCK = 64 * 1024

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-storage-daemon") and shutil.which("qemu-io")),
    reason="qemu-storage-daemon and qemu-io (Debian's qemu-utils) are needed for running-guest tests",
)


def gen_write(k: int) -> tuple[int, int]:
    """Write k of the generation pattern: (offset, byte)."""
    return ((k * 37) % BLOCKS) * MIB, (k % 255) + 1


def expected(base: bytes, k: int) -> bytes:
    img = bytearray(base)
    for i in range(1, k + 1):
        off, b = gen_write(i)
        img[off:off + BLOCK] = bytes([b]) * BLOCK
    return bytes(img)


class Agent:
    """A guest agent double: the agent's JSON protocol on a Unix socket; freezes or refuses to."""

    def __init__(self, path: Path):
        self.path, self.fail, self.log = path, False, []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(4)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rw") as f:
                for line in f:
                    cmd = json.loads(line)
                    self.log.append(cmd["execute"])
                    if cmd["execute"] == "guest-sync":
                        out = {"return": cmd["arguments"]["id"]}
                    elif cmd["execute"] == "guest-fsfreeze-freeze" and self.fail:
                        out = {"error": {"class": "GenericError", "desc": "failed to freeze /var: Device or resource busy"}}
                    else:
                        out = {"return": 3}
                    f.write(json.dumps(out) + "\n")
                    f.flush()


class Writer:
    """`qemu-io` writing the generation pattern through the guest's NBD export until stopped."""

    def __init__(self, nbd: Path, first: int):
        self.proc = subprocess.Popen(["qemu-io", "-f", "raw", f"nbd+unix:///live?socket={nbd}"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.done, self.k, self.running = first - 1, first, True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def write(self, byte: int, off: int, length: int):
        self.proc.stdin.write(f"write -P {byte} {off} {length}\n")
        self.proc.stdin.flush()
        while "wrote" not in (line := self.proc.stdout.readline()):
            assert line, "qemu-io stopped"

    def run(self):
        while self.running:
            off, b = gen_write(self.k)
            self.write(b, off, BLOCK)
            self.done, self.k = self.k, self.k + 1

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait()
        return self.done


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    d = tmp_path_factory.mktemp("live")
    base = os.urandom(SIZE // 2) + bytes(SIZE // 2)
    (d / "base.raw").write_bytes(base)
    image = d / "disk0.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(d / "base.raw"), str(image)], check=True)
    (d / "base.raw").unlink()
    qmp, nbd = d / "qmp.sock", d / "nbd.sock"
    proc = subprocess.Popen([
        "qemu-storage-daemon",
        "--blockdev", f"driver=file,node-name=disk0-file,filename={image}",
        "--blockdev", "driver=qcow2,node-name=disk0,file=disk0-file",
        "--chardev", f"socket,id=qmp,path={qmp},server=on,wait=off", "--monitor", "chardev=qmp",
        "--nbd-server", f"addr.type=unix,addr.path={nbd}",
        "--export", "type=nbd,id=live,node-name=disk0,writable=on,name=live",
    ], stdout=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not (qmp.exists() and nbd.exists()):
        assert time.time() < deadline and proc.poll() is None, "qemu-storage-daemon did not start"
        time.sleep(0.02)
    agent = Agent(d / "qga.sock")
    yield dict(dir=d, base=base, qmp=qmp, nbd=nbd, agent=agent)
    proc.terminate()
    proc.wait()


def task(job, name):
    return next(t for t in job.properties.extended_info.tasks_list if t.task_id == name)


def test_running_guest_seed_flow(server, guest, tmp_path_factory):
    rm = server.client(ResourceManagementClient)
    rs = server.client(RecoveryServicesClient)
    bk = server.client(RecoveryServicesBackupClient)
    group = unique("sdk-live-")
    rm.resource_groups.create_or_update(group, {"location": LOCATION})
    vault = unique("vault-")
    rs.vaults.begin_create_or_update(group, vault, rsm.Vault(location=LOCATION, sku=rsm.Sku(name="Standard"))).result()

    # The VM names its guest by sockets; its disks are discovered over QMP.
    vm = unique("livevm")
    vm_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{vm}"
    got = rm.resources.begin_create_or_update_by_id(vm_id, GenericResource(location=LOCATION, tags={
        "rsvault-qmp": str(guest["qmp"]), "rsvault-guest-agent": str(guest["agent"].path), "rsvault-nbd": str(guest["nbd"]),
    }), api_version=VM_API).result()
    os_disk = got.properties["storageProfile"]["osDisk"]
    assert (os_disk["name"], os_disk["vhd"]["uri"]) == ("disk0", (guest["dir"] / "disk0.qcow2").as_uri())
    assert got.properties["storageProfile"]["dataDisks"] == []

    # A socket outside the grants is refused like any host path.
    with pytest.raises(HttpResponseError) as err:
        rm.resources.begin_create_or_update_by_id(
            vm_id.replace(vm, vm + "x"), GenericResource(location=LOCATION, tags={"rsvault-qmp": "/run/qemu/other.qmp"}),
            api_version=VM_API).result()
    assert err.value.status_code == 400 and err.value.error.code == "UserErrorHostPathNotAvailable"

    container, item = protect_vm(bk, vault, group, vm, vm_id)

    def backup():
        headers = trigger(bk, vault, group, "Azure", container, item, bm.BackupRequestResource(properties=bm.IaasVMBackupRequest()))
        op_id = headers["azure-asyncoperation"].split("/operationsStatus/")[1].split("?")[0]
        job_id = bk.protected_item_operation_statuses.get(vault, group, "Azure", container, item, op_id).properties.job_id
        return wait_job(bk, vault, group, job_id)[1]

    def points():
        return sorted(bk.recovery_points.list(vault, group, "Azure", container, item), key=lambda p: p.properties.recovery_point_time)

    # Backup 1, the writer writing through the guest the whole time.
    w = Writer(guest["nbd"], 1)
    while w.done < 5:
        time.sleep(0.005)
    before = w.done
    job = backup()
    after = w.done
    last = w.stop()
    assert job.properties.status == "Completed", job.properties.error_details
    snap = task(job, "Take Snapshot")
    assert snap.status == "Completed"
    assert "Application consistent: the guest agent froze 3 file system(s)" in snap.task_execution_details, snap.task_execution_details
    assert "1 disk(s) captured at one instant" in snap.task_execution_details
    assert "read in full" in task(job, "Transfer data to vault").task_execution_details
    assert guest["agent"].log[-3:] == ["guest-sync", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]
    (rp1,) = points()
    assert rp1.properties.recovery_point_type == "AppConsistent"

    # RestoreDisks: the image is the disk after exactly the writes made before the instant.
    target = tmp_path_factory.mktemp("live-restores")
    acct = unique("sa")
    acct_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{group}/providers/Microsoft.Storage/storageAccounts/{acct}"
    rm.resources.begin_create_or_update_by_id(acct_id, GenericResource(location=LOCATION, kind="StorageV2", tags={"rsvault-path": str(target)}),
                                              api_version=STORAGE_API).result()

    def restore(rp):
        bk.restores.begin_trigger(vault, group, "Azure", container, item, rp.name, bm.RestoreRequestResource(properties=bm.IaasVMRestoreRequest(
            recovery_point_id=rp.name, recovery_type="RestoreDisks", source_resource_id=vm_id, storage_account_id=acct_id,
            region=LOCATION, create_new_cloud_service=False, original_storage_account_option=False))).result()
        jobs = sorted(bk.backup_jobs.list(vault, group, filter="operation eq 'Restore'"), key=lambda j: j.properties.start_time)
        _, rjob = wait_job(bk, vault, group, jobs[-1].name)
        assert rjob.properties.status == "Completed", rjob.properties.error_details
        (img,) = [p for p in target.rglob("disk0") if p.stat().st_mtime >= time.time() - 120 and p not in seen]
        seen.add(img)
        # Beside the disk, a libvirt domain definition over it, named in the bag as the config is.
        bag = rjob.properties.extended_info.property_bag
        definition = Path(bag["Domain Definition Blob Uri"].removeprefix("file://"))
        assert definition.name == bag["Domain Definition Blob Name"] and definition.parent == img.parent
        dom = ET.parse(definition).getroot()
        assert dom.get("type") == "qemu" and dom.findtext("name").endswith("-restored-" + img.parent.name.rsplit("-", 1)[-1])
        assert [d.find("source").get("file") for d in dom.iter("disk")] == [str(img)]
        if shutil.which("virsh"):  # libvirt's own check of the definition (its in-process test driver)
            out = subprocess.run(["virsh", "-c", "test:///default", "define", str(definition)], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
        return img.read_bytes()

    seen: set[Path] = set()
    got1 = restore(rp1)
    k = next((k for k in range(before, after + 1) if got1 == expected(guest["base"], k)), None)
    assert k is not None, f"the recovery point is no instant between writes {before} and {after}"
    assert last > k, "the writer kept writing after the instant"

    # ≈1 % changed since rp1 (the writes after its instant, one 64 KiB block per MiB); the
    # incremental reads only the 2 MiB chunks they touched.
    changed = {gen_write(i)[0] // (2 * MIB) for i in range(k + 1, last + 1)}
    job2 = backup()
    assert job2.properties.status == "Completed", job2.properties.error_details
    details = task(job2, "Transfer data to vault").task_execution_details
    assert f"{len(changed)} of {SIZE // (2 * MIB)} chunks changed since the last recovery point" in details, details
    bag = job2.properties.extended_info.property_bag
    assert bag["Data Read From Source (in bytes)"] == str(len(changed) * 2 * MIB), bag
    rp2 = points()[-1]
    assert restore(rp2) == expected(guest["base"], last)

    # The guest agent fails to freeze: a crash-consistent point, and the job says so.
    guest["agent"].fail = True
    job3 = backup()
    assert job3.properties.status == "CompletedWithWarnings"
    assert "did not freeze" in job3.properties.extended_info.dynamic_error_message
    assert "did not freeze" in task(job3, "Take Snapshot").task_execution_details
    assert "0 of 32 chunks changed" in task(job3, "Transfer data to vault").task_execution_details
    assert points()[-1].properties.recovery_point_type == "CrashConsistent"

    # The disks of a running guest are not replaced under it.
    with pytest.raises(HttpResponseError) as err:
        bk.restores.begin_trigger(vault, group, "Azure", container, item, rp1.name, bm.RestoreRequestResource(
            properties=bm.IaasVMRestoreRequest(recovery_point_id=rp1.name, recovery_type="OriginalLocation", source_resource_id=vm_id,
                                               region=LOCATION, create_new_cloud_service=False, original_storage_account_option=False))).result()
    assert err.value.status_code == 400 and err.value.error.code == "UserErrorVmNotInDesirableState"
    assert "is running" in err.value.error.message
