//! The `rsvault` binary as an operator uses it: `serve` in a subprocess (ready line, graceful SIGTERM,
//! restart), `principal` and `keys` against a live data dir, `env`, `restic-env` with stock `restic`,
//! and a server killed (SIGKILL) in the middle of a backup; `serve --store-file` on PostgreSQL (when
//! `RSVAULT_TEST_PG_URL` names a test database, as `scripts/test` sets it).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rsvault"))
}

fn serve(dir: &Path) -> (Serving, String) {
    serve_with(dir, &[])
}

/// `serve` with an `--allow-path` per root.
fn serve_granting(dir: &Path, roots: &[&Path]) -> (Serving, String) {
    let extra: Vec<String> = roots.iter().map(|r| format!("--allow-path={}", r.display())).collect();
    serve_with(dir, &extra)
}

/// `serve` with extra options; returns the child and its URL once it is ready.
fn serve_with(dir: &Path, extra: &[String]) -> (Serving, String) {
    let (child, line) = serve_line(dir, extra);
    let url = line
        .strip_prefix("rsvault listening on ")
        .unwrap_or_else(|| panic!("ready line: {line}"))
        .to_string();
    (child, url)
}

/// `serve` with extra options; returns the child and its first stdout line (any role's ready line).
fn serve_line(dir: &Path, extra: &[impl AsRef<std::ffi::OsStr>]) -> (Serving, String) {
    let mut child = bin()
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(Serving)
        .unwrap();
    let line = first_line(&mut child);
    (child, line)
}

/// A child process (a `serve`, a `qemu-storage-daemon`) killed when dropped, so a test that
/// panics leaves no process behind.
struct Serving(Child);

impl std::ops::Deref for Serving {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Serving {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // A child already waited for is not signalled again.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A spawned `serve`'s first stdout line (its ready line); the rest is drained for as long as the
/// server lives, so the pipe stays open.
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    reader.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    line.trim().to_string()
}

fn sigterm_and_wait(mut child: Serving) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no graceful exit within 15 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_json(args: &[&str], dir: &Path) -> Value {
    let out = bin().args(args).arg("--data-dir").arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn serve_bootstraps_then_stops_gracefully_and_restarts_with_the_same_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (child, url) = serve(&dir);
    assert!(url.starts_with("https://127.0.0.1:"));
    let boot: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bootstrap.json")).unwrap()).unwrap();
    assert_eq!(boot["resourceManager"], url.as_str());
    for k in ["tenantId", "subscriptionId", "authority", "clientId", "clientSecret"] {
        assert!(boot[k].as_str().is_some_and(|v| !v.is_empty()), "{k}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("bootstrap.json")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("meta.db")), 0o600);
    assert_eq!(mode(&dir.join("server-key.pem")), 0o600);
    assert!(dir.join("ca.pem").exists());
    assert!(sigterm_and_wait(child).success(), "SIGTERM is a clean shutdown");

    let (child, _) = serve(&dir);
    let again: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bootstrap.json")).unwrap()).unwrap();
    assert_eq!(
        (&again["tenantId"], &again["clientSecret"]),
        (&boot["tenantId"], &boot["clientSecret"])
    );
    assert!(sigterm_and_wait(child).success());
}

/// A fresh schema of the test database as a store URL, or `None` (said on stderr) without one.
fn pg_test_store() -> Option<(String, String)> {
    let Ok(url) = std::env::var("RSVAULT_TEST_PG_URL") else {
        assert!(
            std::env::var_os("RSVAULT_TEST_PG_REQUIRED").is_none(),
            "RSVAULT_TEST_PG_REQUIRED is set but RSVAULT_TEST_PG_URL is not"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED: rsvault serve on PostgreSQL (RSVAULT_TEST_PG_URL is unset)"
        );
        return None;
    };
    let schema = format!("cli_{}", std::process::id());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("the test database answers");
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .unwrap();
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_string())
        .expect("the test URL carries a password");
    let sep = if url.contains('?') { '&' } else { '?' };
    Some((format!("{url}{sep}options=-csearch_path%3D{schema}"), password))
}

#[test]
fn serve_keeps_its_store_in_postgres_from_a_private_file_and_never_logs_the_password() {
    let Some((store_url, password)) = pg_test_store() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let file = tmp.path().join("store-url");
    std::fs::write(&file, format!("{store_url}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .arg("--store-file")
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("chmod 600"), "{said}");
    assert!(!said.contains(&password));

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = tmp.path().join("serve.log");
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .arg("--store-file")
        .arg(&file)
        .env("RSVAULT_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(Serving)
        .unwrap();
    assert!(first_line(&mut child).starts_with("rsvault listening on "));
    assert!(!dir.join("meta.db").exists(), "the store is not the data dir's file");
    // The other commands reach the same store through the environment.
    let out = bin()
        .args(["principal", "create", "--name", "ops", "--data-dir"])
        .arg(&dir)
        .env("RSVAULT_STORE_URL", &store_url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bin()
        .args(["principal", "list", "--data-dir"])
        .arg(&dir)
        .arg("--store-file")
        .arg(&file)
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert!(sigterm_and_wait(child).success(), "SIGTERM is a clean shutdown");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("metadata store") && logged.contains(":***@"),
        "{logged}"
    );
    assert!(!logged.contains(&password), "the log shows the store password");
}

#[test]
fn a_node_whose_server_key_differs_from_the_stores_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (child, _) = serve(&dir);
    assert!(sigterm_and_wait(child).success());
    // Another key (as a second node given the wrong file would have): refused, saying why.
    use std::os::unix::fs::PermissionsExt;
    let other = tmp.path().join("other.key");
    std::fs::write(&other, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = bin()
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0", "--server-key"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a node with another server key must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not the key this store's vault passwords are sealed with"),
        "{err}"
    );
    // The same key given explicitly is accepted.
    let (child, _) = serve_with(
        &dir,
        &["--server-key".into(), dir.join("engine.key").display().to_string()],
    );
    assert!(sigterm_and_wait(child).success());
}

#[test]
fn principals_are_managed_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (child, _) = serve(&dir);
    let boot: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bootstrap.json")).unwrap()).unwrap();
    let scope = format!("/subscriptions/{}", boot["subscriptionId"].as_str().unwrap());
    let p = run_json(
        &[
            "principal",
            "create",
            "--name",
            "ops",
            "--role",
            "Backup Reader",
            "--scope",
            &scope,
        ],
        &dir,
    );
    assert_eq!(p["tenantId"], boot["tenantId"]);
    let id = p["clientId"].as_str().unwrap().to_string();
    assert_eq!(p["clientSecret"].as_str().unwrap().len(), 40);
    let list = run_json(&["principal", "list"], &dir);
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["clientId"] == id.as_str())
        .unwrap();
    assert_eq!(listed["roles"][0]["role"], "Backup Reader");
    assert!(
        !list.to_string().contains(p["clientSecret"].as_str().unwrap()),
        "list never shows secrets"
    );
    let reset = run_json(&["principal", "reset-secret", "--client-id", &id], &dir);
    assert_ne!(reset["clientSecret"], p["clientSecret"]);
    let out = bin()
        .args(["principal", "delete", "--client-id", &id, "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = bin()
        .args(["principal", "delete", "--client-id", &id, "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success(), "deleting twice fails");
    let bad = bin()
        .args([
            "principal",
            "create",
            "--name",
            "x",
            "--role",
            "Galactic Emperor",
            "--scope",
            &scope,
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let k = run_json(&["keys", "rotate"], &dir);
    assert!(k["kid"].is_string());
    let env = bin().args(["env", "--data-dir"]).arg(&dir).output().unwrap();
    let text = String::from_utf8(env.stdout).unwrap();
    assert!(
        text.contains("ClientSecretCredential")
            && text.contains("az cloud register")
            && text.contains(boot["clientId"].as_str().unwrap())
    );
    assert!(
        !text.contains(boot["clientSecret"].as_str().unwrap()),
        "env does not print the secret"
    );
    assert!(sigterm_and_wait(child).success());
}

#[test]
fn commands_refuse_a_dir_that_was_never_started() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["principal", "list", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an rsvault data dir"));
}

#[test]
fn vms_and_shares_are_declared_without_arm_while_the_server_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let grant = format!("--allow-path={}", host.display());
    let (child, _url) = serve_granting(&dir, &[&host]);
    let os = host.join("os.raw");
    std::fs::write(&os, vec![0u8; 1 << 20]).unwrap();
    let data = host.join("data.qcow2");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&data)
        .arg("2G")
        .status()
        .expect("qemu-img (qemu-utils) builds the fixture")
        .success());
    let vm = run_json(
        &[
            "vm",
            "add",
            "-g",
            "home",
            "--name",
            "nas1",
            "--disk",
            os.to_str().unwrap(),
            "--disk",
            data.to_str().unwrap(),
            &grant,
        ],
        &dir,
    );
    assert_eq!(vm["type"], "Microsoft.Compute/virtualMachines");
    assert!(vm["id"]
        .as_str()
        .unwrap()
        .ends_with("/resourceGroups/home/providers/Microsoft.Compute/virtualMachines/nas1"));
    assert_eq!(vm["properties"]["storageProfile"]["dataDisks"][0]["diskSizeGB"], 2);
    // The CLI's paths pass the same grants: a missing image, one outside the grant, and one
    // without any --allow-path are all refused alike.
    let ungranted = tmp.path().join("outside.raw");
    std::fs::write(&ungranted, vec![0u8; 4096]).unwrap();
    for (disk, with_grant) in [
        (host.join("nonexistent.img"), true),
        (ungranted.clone(), true),
        (os.clone(), false),
    ] {
        let mut cmd = bin();
        cmd.args(["vm", "add", "-g", "home", "--name", "nas2", "--disk"])
            .arg(&disk)
            .arg("--data-dir")
            .arg(&dir);
        if with_grant {
            cmd.arg(&grant);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{}", disk.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "The path 'file://{}' is not available to rsvault",
                disk.display()
            )),
            "{err}"
        );
    }
    let files = host.join("files");
    let share = run_json(
        &[
            "share",
            "add",
            "-g",
            "home",
            "--account",
            "files1",
            "--path",
            files.to_str().unwrap(),
            "--share",
            "docs",
            &grant,
        ],
        &dir,
    );
    assert_eq!(share["type"], "Microsoft.Storage/storageAccounts/fileServices/shares");
    assert!(files.join("docs").is_dir());
    assert!(sigterm_and_wait(child).success());
}

/// The vault `v1` of group `home` and the protected item of VM `vm` there, for the subscription
/// of the VM `vm add` printed.
fn vault_and_item(vm: &Value, name: &str) -> (String, String) {
    let sub = vm["id"].as_str().unwrap().split('/').nth(2).unwrap().to_string();
    let vault = format!("/subscriptions/{sub}/resourceGroups/home/providers/Microsoft.RecoveryServices/vaults/v1");
    let item = format!("{vault}/backupFabrics/Azure/protectionContainers/IaasVMContainer;iaasvmcontainerv2;home;{name}/protectedItems/VM;iaasvmcontainerv2;home;{name}");
    (vault, item)
}

/// Creates the vault and protects the item with its DefaultPolicy.
async fn vault_protecting(api: &Api, vault: &str, item: &str) {
    const BK: &str = "api-version=2026-10-01";
    let (st, b) = api
        .call(
            "PUT",
            &format!("{vault}?{BK}"),
            Some(serde_json::json!({"location": "westus", "sku": {"name": "Standard"}})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let (st, b) = api
        .call("PUT", &format!("{item}?{BK}"), Some(serde_json::json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": format!("{vault}/backupPolicies/DefaultPolicy")}})))
        .await;
    assert_eq!(st, 202, "{b}");
}

/// Waits until the backup job's transfer runs (it must not have finished).
async fn until_transfer_runs(api: &Api, vault: &str, job: &str) {
    const BK: &str = "api-version=2026-10-01";
    for _ in 0..2000 {
        let (_, j) = api.call("GET", &format!("{vault}/backupJobs/{job}?{BK}"), None).await;
        assert_eq!(j["properties"]["status"], "InProgress", "finished before the kill: {j}");
        if j["properties"]["extendedInfo"]["tasksList"][1]["status"] == "InProgress" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the transfer never started");
}

/// A `qemu-storage-daemon` serving the qcow2 `img` as node `disk0`, QMP on `guest.qmp` beside it.
fn run_guest(img: &Path) -> (Serving, std::path::PathBuf) {
    let qmp = img.with_file_name("guest.qmp");
    let guest = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!("driver=file,node-name=file0,filename={}", img.display()))
        .args(["--blockdev", "driver=qcow2,node-name=disk0,file=file0", "--chardev"])
        .arg(format!("socket,id=qmp,path={},server=on,wait=off", qmp.display()))
        .args(["--monitor", "chardev=qmp"])
        .stdout(Stdio::null())
        .spawn()
        .map(Serving)
        .expect("qemu-storage-daemon (Debian's qemu-system-common) stands in for a running guest");
    let end = Instant::now() + Duration::from_secs(10);
    while !qmp.exists() {
        assert!(Instant::now() < end, "qemu-storage-daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (guest, qmp)
}

/// Issue 18: a server killed (SIGKILL) during an incremental backup of a running guest restarts
/// with that job failed and no recovery point from it; the guest keeps what the crash left (the
/// parent's dirty bitmap disabled, the fleecing of the killed job), and the next backup still
/// completes: it reads the disk in full, since that bitmap is not trusted any more, and says so.
#[test]
fn a_server_killed_during_a_running_guests_backup_leaves_no_point_and_the_next_backup_reads_in_full() {
    const SIZE: usize = 512 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let grant = format!("--allow-path={}", host.display());
    let (server, url) = serve_granting(&dir, &[&host]);
    let raw = host.join("disk0.raw");
    write_random(&raw, SIZE);
    let img = host.join("disk0.qcow2");
    assert!(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img)
        .status()
        .expect("qemu-img (qemu-utils) builds the fixture")
        .success());
    std::fs::remove_file(&raw).unwrap();
    let (_guest, qmp) = run_guest(&img);
    let vm = run_json(
        &[
            "vm",
            "add",
            "-g",
            "home",
            "--name",
            "live",
            "--qmp",
            qmp.to_str().unwrap(),
            &grant,
        ],
        &dir,
    );
    let (vault, item) = vault_and_item(&vm, "live");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const BK: &str = "api-version=2026-10-01";
    let backup = serde_json::json!({"properties": {"objectType": "IaasVMBackupRequest"}});
    let killed = rt.block_on(async {
        let api = Api::new(&dir, &url).await;
        vault_protecting(&api, &vault, &item).await;
        let first = post_job(&api, format!("{item}/backup?{BK}"), backup.clone()).await;
        let j = wait_job(&api, &vault, &first).await;
        assert_eq!(j["properties"]["status"], "Completed", "{j}");
        let job = post_job(&api, format!("{item}/backup?{BK}"), backup.clone()).await;
        until_transfer_runs(&api, &vault, &job).await;
        job
    });
    let mut server = server;
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();

    let (server, url) = serve_granting(&dir, &[&host]);
    rt.block_on(async {
        let api = Api::new(&dir, &url).await;
        let (_, j) = api
            .call("GET", &format!("{vault}/backupJobs/{killed}?{BK}"), None)
            .await;
        assert_eq!(j["properties"]["status"], "Failed", "{j}");
        let (_, jobs) = api
            .call(
                "GET",
                &format!("{vault}/backupJobs?{BK}&$filter=status%20eq%20'InProgress'"),
                None,
            )
            .await;
        assert_eq!(jobs["value"], serde_json::json!([]), "no job left InProgress");
        let (_, rps) = api.call("GET", &format!("{item}/recoveryPoints?{BK}"), None).await;
        assert_eq!(
            rps["value"].as_array().unwrap().len(),
            1,
            "only the first backup's point: {rps}"
        );
        let next = post_job(&api, format!("{item}/backup?{BK}"), backup.clone()).await;
        let j = wait_job(&api, &vault, &next).await;
        let p = &j["properties"];
        assert!(
            p["status"] == "Completed" || p["status"] == "CompletedWithWarnings",
            "{j}"
        );
        let transfer = p["extendedInfo"]["tasksList"][1]["taskExecutionDetails"]
            .as_str()
            .unwrap_or_default();
        assert!(
            transfer.contains("read in full") && transfer.contains("stopped recording"),
            "the job says why it read everything: {j}"
        );
        assert_eq!(
            p["extendedInfo"]["propertyBag"]["Data Read From Source (in bytes)"],
            SIZE.to_string(),
            "{j}"
        );
        let (_, rps) = api.call("GET", &format!("{item}/recoveryPoints?{BK}"), None).await;
        assert_eq!(rps["value"].as_array().unwrap().len(), 2, "{rps}");
    });
    assert!(sigterm_and_wait(server).success());
}

/// Issue 18: `vm add --qmp` declares a running guest (a `qemu-storage-daemon` serving a qcow2
/// disk) by its sockets, its disks discovered over QMP; its sockets pass the grants as paths do.
#[test]
fn a_running_guest_is_declared_by_its_qmp_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let grant = format!("--allow-path={}", host.display());
    let (server, _url) = serve_granting(&dir, &[&host]);
    let img = host.join("disk0.qcow2");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("96M")
        .status()
        .expect("qemu-img (qemu-utils) builds the fixture")
        .success());
    let (guest, qmp) = run_guest(&img);
    let agent = host.join("guest.qga");
    let vm = run_json(
        &[
            "vm",
            "add",
            "-g",
            "home",
            "--name",
            "live1",
            "--qmp",
            qmp.to_str().unwrap(),
            "--guest-agent",
            agent.to_str().unwrap(),
            &grant,
        ],
        &dir,
    );
    assert!(vm["id"]
        .as_str()
        .unwrap()
        .ends_with("/resourceGroups/home/providers/Microsoft.Compute/virtualMachines/live1"));
    assert_eq!(vm["tags"]["rsvault-qmp"], qmp.to_str().unwrap(), "{vm}");
    assert_eq!(vm["tags"]["rsvault-guest-agent"], agent.to_str().unwrap(), "{vm}");
    let os = &vm["properties"]["storageProfile"]["osDisk"];
    assert_eq!(os["name"], "disk0", "{vm}");
    assert_eq!(os["rsvaultNode"], "disk0", "{vm}");
    assert_eq!(os["diskSizeGB"], 1, "{vm}");
    assert_eq!(os["vhd"]["uri"], format!("file://{}", img.display()), "{vm}");

    // Without a grant for the socket, or with a socket nothing answers on: the one refusal.
    let outside = tempfile::tempdir().unwrap();
    let silent = host.join("nobody.qmp");
    for (sock, with_grant) in [
        (qmp.clone(), false),
        (outside.path().join("x.qmp"), true),
        (silent.clone(), true),
    ] {
        let mut cmd = bin();
        cmd.args(["vm", "add", "-g", "home", "--name", "live2", "--qmp"])
            .arg(&sock)
            .arg("--data-dir")
            .arg(&dir);
        if with_grant {
            cmd.arg(&grant);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{}", sock.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("The path '{}' is not available to rsvault", sock.display())),
            "{}: {err}",
            sock.display()
        );
    }
    // --guest-agent names the agent of a --qmp guest only.
    let out = bin()
        .args(["vm", "add", "-g", "home", "--name", "live3", "--guest-agent"])
        .arg(&agent)
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    drop(guest);
    assert!(sigterm_and_wait(server).success());
}

/// Pseudo-random, incompressible bytes written in 8 MiB pieces.
fn write_random(path: &Path, len: usize) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 8 << 20];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn new(dir: &Path, url: &str) -> Api {
        let ca = std::fs::read(dir.join("ca.pem")).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let boot: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bootstrap.json")).unwrap()).unwrap();
        let tok: Value = http
            .post(format!(
                "{url}/{}/oauth2/v2.0/token",
                boot["tenantId"].as_str().unwrap()
            ))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", boot["clientId"].as_str().unwrap()),
                ("client_secret", boot["clientSecret"].as_str().unwrap()),
                ("scope", "https://management.azure.com/.default"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Api {
            http,
            url: url.to_string(),
            token: tok["access_token"].as_str().unwrap().to_string(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", self.url),
            )
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let st = r.status().as_u16();
        let t = r.text().await.unwrap();
        (
            st,
            if t.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&t).unwrap()
            },
        )
    }
}

#[test]
fn a_server_killed_during_a_backup_restarts_with_the_job_failed_and_no_recovery_point() {
    killed_backup_leaves_no_recovery_point(1 << 30, false);
}

/// Issue 15: the same kill while the packs go to an S3 store (Garage, started by the test
/// command): the vault there stays clean for stock `restic check`, and the next backup completes.
#[test]
fn a_server_killed_while_uploading_to_s3_leaves_the_vault_clean_and_the_next_backup_completes() {
    killed_backup_leaves_no_recovery_point(256 << 20, true);
}

/// The server's storage file for the S3 store the test command started (`None` outside it,
/// unless `RSVAULT_REQUIRE_OBJECT_STORES=1`, which makes that a failure).
fn s3_storage_file(dir: &Path) -> Option<std::path::PathBuf> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(endpoint) = var("RSVAULT_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("RSVAULT_REQUIRE_OBJECT_STORES").as_deref() != Ok("1"),
            "no S3 store in the environment: run the tests through scripts/test"
        );
        eprintln!("note: no S3 store (RSVAULT_TEST_S3_*): skipped");
        return None;
    };
    let f = dir.join("storage.toml");
    std::fs::write(
        &f,
        format!(
            "default = \"s3\"\n[targets.s3]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{}\"\nregion = \"{}\"\nprefix = \"cli-tests\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            var("RSVAULT_TEST_S3_BUCKET").unwrap(),
            var("RSVAULT_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
            var("RSVAULT_TEST_S3_ACCESS_KEY_ID").unwrap(),
            var("RSVAULT_TEST_S3_SECRET_ACCESS_KEY").unwrap()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    Some(f)
}

fn killed_backup_leaves_no_recovery_point(size: usize, s3: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let grant = format!("--allow-path={}", host.display());
    let storage = match s3 {
        false => vec![],
        true => match s3_storage_file(tmp.path()) {
            Some(f) => vec!["--storage".to_string(), f.display().to_string()],
            None => return,
        },
    };
    let serve_args: Vec<String> = [grant.clone()].into_iter().chain(storage.iter().cloned()).collect();
    let (child, url) = serve_with(&dir, &serve_args);
    let disk = host.join("big.raw");
    write_random(&disk, size);
    let vm = run_json(
        &[
            "vm",
            "add",
            "-g",
            "home",
            "--name",
            "big",
            "--disk",
            disk.to_str().unwrap(),
            &grant,
        ],
        &dir,
    );
    let (vault, item) = vault_and_item(&vm, "big");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const BK: &str = "api-version=2026-10-01";
    let job = rt.block_on(async {
        let api = Api::new(&dir, &url).await;
        vault_protecting(&api, &vault, &item).await;
        let job = post_job(
            &api,
            format!("{item}/backup?{BK}"),
            serde_json::json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
        )
        .await;
        // Wait until the transfer runs, then kill the server outright.
        until_transfer_runs(&api, &vault, &job).await;
        job
    });
    let mut child = child;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (child, url) = serve_with(&dir, &serve_args);
    rt.block_on(async {
        let api = Api::new(&dir, &url).await;
        let (st, j) = api.call("GET", &format!("{vault}/backupJobs/{job}?{BK}"), None).await;
        assert_eq!(st, 200);
        let p = &j["properties"];
        assert_eq!(p["status"], "Failed", "{j}");
        assert!(
            p["errorDetails"][0]["errorString"]
                .as_str()
                .unwrap()
                .contains("stopped while this job ran"),
            "{j}"
        );
        assert_eq!(p["extendedInfo"]["tasksList"][1]["status"], "Failed");
        assert!(p["endTime"].is_string());
        let (_, rps) = api.call("GET", &format!("{item}/recoveryPoints?{BK}"), None).await;
        assert_eq!(rps["value"], serde_json::json!([]), "no half recovery point");
        let (_, it) = api.call("GET", &format!("{item}?{BK}"), None).await;
        assert_eq!(it["properties"]["lastBackupStatus"], "Failed");
    });
    // Stock restic sees a valid repository with no snapshot.
    let out = bin()
        .args(["restic-env", "--data-dir"])
        .arg(&dir)
        .args(["--vault", &vault])
        .args(&storage)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut restic = Command::new("restic");
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (k, v) = line.split_once('=').unwrap();
        restic.env(k, v.trim_matches('\''));
    }
    let snaps = restic
        .args(["snapshots", "--json", "--no-lock"])
        .output()
        .expect("restic (Debian package)");
    assert!(snaps.status.success(), "{}", String::from_utf8_lossy(&snaps.stderr));
    let list: Value = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(list, serde_json::json!([]), "the killed backup left no snapshot");
    if s3 {
        let mut again = Command::new("restic");
        for line in String::from_utf8(out_env(&dir, &vault, &storage)).unwrap().lines() {
            let (k, v) = line.split_once('=').unwrap();
            again.env(k, v.trim_matches('\''));
        }
        let check = again.args(["check", "--no-lock", "--no-cache"]).output().unwrap();
        assert!(
            check.status.success(),
            "restic check: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        // The next backup completes, into the same vault on S3.
        rt.block_on(async {
            let api = Api::new(&dir, &url).await;
            let job = post_job(
                &api,
                format!("{item}/backup?{BK}"),
                serde_json::json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
            )
            .await;
            let j = wait_job(&api, &vault, &job).await;
            assert_eq!(j["properties"]["status"], "Completed", "{j}");
        });
    }
    assert!(sigterm_and_wait(child).success());
}

fn out_env(dir: &Path, vault: &str, storage: &[String]) -> Vec<u8> {
    let out = bin()
        .args(["restic-env", "--data-dir"])
        .arg(dir)
        .args(["--vault", vault])
        .args(storage)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// POSTs a backup or restore and follows its operation to the job id.
async fn post_job(api: &Api, path: String, body: Value) -> String {
    let r = api
        .http
        .post(format!("{}{path}", api.url))
        .bearer_auth(&api.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let status = r.headers()["azure-asyncoperation"].to_str().unwrap().to_string();
    let op: Value = api
        .http
        .get(&status)
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    op["properties"]["jobId"].as_str().unwrap().to_string()
}

/// `len` bytes of a xorshift stream seeded with `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Issue 19: SIGKILL during an OriginalLocation + Overwrite share restore, at several moments. After
/// the restart every file is either the live version or the restored one (never a mix), no
/// temporary is left, and the job says what happened.
#[test]
fn a_server_killed_during_a_share_restore_leaves_every_file_whole() {
    const FILES: u64 = 32;
    const LEN: usize = 2 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let grant = format!("--allow-path={}", host.display());
    let (mut child, mut url) = serve_granting(&dir, &[&host]);
    let files = host.join("files");
    let share = run_json(
        &[
            "share",
            "add",
            "-g",
            "home",
            "--account",
            "files1",
            "--path",
            files.to_str().unwrap(),
            "--share",
            "docs",
            &grant,
        ],
        &dir,
    );
    let sub = share["id"].as_str().unwrap().split('/').nth(2).unwrap().to_string();
    let docs = files.join("docs");
    let path_of = |i: u64| docs.join(format!("d{}", i % 4)).join(format!("f{i}.bin"));
    for i in 0..FILES {
        std::fs::create_dir_all(path_of(i).parent().unwrap()).unwrap();
        std::fs::write(path_of(i), pattern(i + 1, LEN)).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const BK: &str = "api-version=2026-10-01";
    let rg = format!("/subscriptions/{sub}/resourceGroups/home");
    let vault = format!("{rg}/providers/Microsoft.RecoveryServices/vaults/v1");
    let acct = format!("{rg}/providers/Microsoft.Storage/storageAccounts/files1");
    let container = format!("{vault}/backupFabrics/Azure/protectionContainers/StorageContainer;Storage;home;files1");
    let item = format!("{container}/protectedItems/AzureFileShare;docs");
    let rp = rt.block_on(async {
        let api = Api::new(&dir, &url).await;
        let calls = [
            (format!("{vault}?{BK}"), serde_json::json!({"location": "westus", "sku": {"name": "Standard"}})),
            (format!("{container}?{BK}"), serde_json::json!({"properties": {"backupManagementType": "AzureStorage", "containerType": "StorageContainer", "sourceResourceId": acct}})),
            (format!("{vault}/backupPolicies/afs?{BK}"), serde_json::json!({"properties": {"backupManagementType": "AzureStorage", "workLoadType": "AzureFileShare",
                "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": ["2026-01-01T03:00:00Z"]},
                "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": ["2026-01-01T03:00:00Z"], "retentionDuration": {"count": 30, "durationType": "Days"}}},
                "timeZone": "UTC"}})),
            (format!("{item}?{BK}"), serde_json::json!({"properties": {"protectedItemType": "AzureFileShareProtectedItem", "policyId": format!("{vault}/backupPolicies/afs"), "sourceResourceId": acct}})),
        ];
        for (path, body) in calls {
            let (st, b) = api.call("PUT", &path, Some(body)).await;
            assert!((200..300).contains(&st), "{path}: {st} {b}");
        }
        let job = post_job(&api, format!("{item}/backup?{BK}"), serde_json::json!({"properties": {"objectType": "AzureFileShareBackupRequest"}})).await;
        for _ in 0..3000 {
            let (_, j) = api.call("GET", &format!("{vault}/backupJobs/{job}?{BK}"), None).await;
            match j["properties"]["status"].as_str().unwrap() {
                "InProgress" => tokio::time::sleep(Duration::from_millis(50)).await,
                "Completed" => {
                    let (_, rps) = api.call("GET", &format!("{item}/recoveryPoints?{BK}"), None).await;
                    return rps["value"][0]["name"].as_str().unwrap().to_string();
                }
                _ => panic!("backup: {j}"),
            }
        }
        panic!("the backup did not finish");
    });
    let mut killed_in_transfer = 0;
    for (round, delay_ms) in kill_moments(&[0, 300, 900]).into_iter().enumerate() {
        let live_seed = |i: u64| 1000 * (round as u64 + 1) + i;
        for i in 0..FILES {
            std::fs::write(path_of(i), pattern(live_seed(i), LEN)).unwrap();
        }
        let job = rt.block_on(async {
            let api = Api::new(&dir, &url).await;
            let job = post_job(&api, format!("{item}/recoveryPoints/{rp}/restore?{BK}"), serde_json::json!({"properties": {"objectType": "AzureFileShareRestoreRequest",
                "recoveryType": "OriginalLocation", "sourceResourceId": acct, "copyOptions": "Overwrite", "restoreRequestType": "FullShareRestore"}})).await;
            for _ in 0..3000 {
                let (_, j) = api.call("GET", &format!("{vault}/backupJobs/{job}?{BK}"), None).await;
                if j["properties"]["extendedInfo"]["tasksList"][0]["status"] == "InProgress" || j["properties"]["status"] != "InProgress" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let (_, j) = api.call("GET", &format!("{vault}/backupJobs/{job}?{BK}"), None).await;
            if j["properties"]["extendedInfo"]["tasksList"][0]["status"] == "InProgress" {
                killed_in_transfer += 1;
            }
            job
        });
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        (child, url) = serve_granting(&dir, &[&host]);
        // Every file whole: the live version or the backed-up one; no temporary left.
        let mut restored = 0;
        for i in 0..FILES {
            let got = std::fs::read(path_of(i)).unwrap();
            if got == pattern(i + 1, LEN) {
                restored += 1;
            } else {
                assert!(
                    got == pattern(live_seed(i), LEN),
                    "round {round}: {} is a mix",
                    path_of(i).display()
                );
            }
        }
        let mut stack = vec![docs.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(!name.contains(".rsvault-restore-"), "round {round}: leftover {name}");
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        rt.block_on(async {
            let api = Api::new(&dir, &url).await;
            let (_, j) = api.call("GET", &format!("{vault}/backupJobs/{job}?{BK}"), None).await;
            let p = &j["properties"];
            match p["status"].as_str().unwrap() {
                "Completed" => assert_eq!(restored, FILES, "round {round}: completed but not all restored"),
                "Failed" => assert!(
                    p["errorDetails"][0]["errorString"]
                        .as_str()
                        .unwrap()
                        .contains("never a mix"),
                    "{j}"
                ),
                other => panic!("round {round}: job left {other}: {j}"),
            }
        });
    }
    assert!(killed_in_transfer > 0, "no kill landed while the restore ran");
    restic_check(&dir, &vault);
    assert!(sigterm_and_wait(child).success());
}

/// PUTs and expects 202 Accepted.
async fn put_accepted(api: &Api, path: &str, body: Value) {
    let (st, b) = api.call("PUT", path, Some(body)).await;
    assert_eq!(st, 202, "{path}: {b}");
}

/// Polls a job until it leaves InProgress.
async fn wait_job(api: &Api, vault: &str, job: &str) -> Value {
    const BK: &str = "api-version=2026-10-01";
    for _ in 0..6000 {
        let (_, j) = api.call("GET", &format!("{vault}/backupJobs/{job}?{BK}"), None).await;
        if j["properties"]["status"] != "InProgress" {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job} did not end");
}

/// Runs stock `restic check` on a vault of the data dir.
fn restic_check(dir: &Path, vault: &str) {
    let out = bin()
        .args(["restic-env", "--data-dir"])
        .arg(dir)
        .args(["--vault", vault])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut restic = Command::new("restic");
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (k, v) = line.split_once('=').unwrap();
        restic.env(k, v.trim_matches('\''));
    }
    let check = restic
        .args(["check", "--no-lock"])
        .output()
        .expect("restic (Debian package)");
    assert!(
        check.status.success(),
        "restic check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Issue 19: SIGKILL during a RestoreDisks restore left a full-size hidden temporary image in the
/// target forever. After the restart it is gone, the job says what happened, the vault passes stock
/// `restic check`, and the point still restores.
#[test]
fn a_server_killed_during_a_disk_restore_leaves_no_temporary_image() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let grant = format!("--allow-path={}", host.display());
    let (mut child, mut url) = serve_granting(&dir, &[&host]);
    let disk = host.join("big.raw");
    write_random(&disk, 512 << 20);
    let vm = run_json(
        &[
            "vm",
            "add",
            "-g",
            "home",
            "--name",
            "big",
            "--disk",
            disk.to_str().unwrap(),
            &grant,
        ],
        &dir,
    );
    let files = host.join("restores");
    run_json(
        &[
            "share",
            "add",
            "-g",
            "home",
            "--account",
            "restores1",
            "--path",
            files.to_str().unwrap(),
            "--share",
            "unused",
            &grant,
        ],
        &dir,
    );
    let sub = vm["id"].as_str().unwrap().split('/').nth(2).unwrap().to_string();
    let rg = format!("/subscriptions/{sub}/resourceGroups/home");
    let vault = format!("{rg}/providers/Microsoft.RecoveryServices/vaults/v1");
    let item = format!("{vault}/backupFabrics/Azure/protectionContainers/IaasVMContainer;iaasvmcontainerv2;home;big/protectedItems/VM;iaasvmcontainerv2;home;big");
    const BK: &str = "api-version=2026-10-01";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let restore_body = serde_json::json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryType": "RestoreDisks",
        "sourceResourceId": format!("{rg}/providers/Microsoft.Compute/virtualMachines/big"),
        "storageAccountId": format!("{rg}/providers/Microsoft.Storage/storageAccounts/restores1"), "region": "westus"}});
    let (rp, job) = rt.block_on(async {
        let api = Api::new(&dir, &url).await;
        let (st, b) = api.call("PUT", &format!("{vault}?{BK}"), Some(serde_json::json!({"location": "westus", "sku": {"name": "Standard"}}))).await;
        assert_eq!(st, 201, "{b}");
        let (st, b) = api
            .call("PUT", &format!("{item}?{BK}"), Some(serde_json::json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": format!("{vault}/backupPolicies/DefaultPolicy")}})))
            .await;
        assert_eq!(st, 202, "{b}");
        let job = post_job(&api, format!("{item}/backup?{BK}"), serde_json::json!({"properties": {"objectType": "IaasVMBackupRequest"}})).await;
        assert_eq!(wait_job(&api, &vault, &job).await["properties"]["status"], "Completed");
        let (_, rps) = api.call("GET", &format!("{item}/recoveryPoints?{BK}"), None).await;
        let rp = rps["value"][0]["name"].as_str().unwrap().to_string();
        let mut body = restore_body.clone();
        body["properties"]["recoveryPointId"] = serde_json::json!(rp);
        let job = post_job(&api, format!("{item}/recoveryPoints/{rp}/restore?{BK}"), body).await;
        for _ in 0..3000 {
            let (_, j) = api.call("GET", &format!("{vault}/backupJobs/{job}?{BK}"), None).await;
            assert_eq!(j["properties"]["status"], "InProgress", "the restore ended before the kill: {j}");
            let tasks = &j["properties"]["extendedInfo"]["tasksList"];
            if tasks[0]["status"] == "InProgress" || tasks[1]["status"] == "InProgress" {
                tokio::time::sleep(Duration::from_millis(400)).await;
                return (rp, job);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the restore never started");
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    (child, url) = serve_granting(&dir, &[&host]);
    let leftovers = |d: &Path| -> Vec<String> {
        let mut out = vec![];
        let mut stack = vec![d.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else if e.file_name().to_string_lossy().contains(".rsvault-restore-") {
                    out.push(e.path().display().to_string());
                }
            }
        }
        out
    };
    assert_eq!(
        leftovers(&files),
        Vec::<String>::new(),
        "a temporary image survived the restart"
    );
    rt.block_on(async {
        let api = Api::new(&dir, &url).await;
        let j = wait_job(&api, &vault, &job).await;
        assert_eq!(j["properties"]["status"], "Failed", "{j}");
        assert!(
            j["properties"]["errorDetails"][0]["errorString"]
                .as_str()
                .unwrap()
                .contains("never a mix"),
            "{j}"
        );
        // The point still restores, byte for byte.
        let mut body = restore_body.clone();
        body["properties"]["recoveryPointId"] = serde_json::json!(rp);
        let again = post_job(&api, format!("{item}/recoveryPoints/{rp}/restore?{BK}"), body).await;
        assert_eq!(
            wait_job(&api, &vault, &again).await["properties"]["status"],
            "Completed"
        );
    });
    let images: Vec<_> = std::fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.ends_with("unused"))
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| !is_restore_config(p))
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    assert!(
        std::fs::read(&images[0]).unwrap() == std::fs::read(&disk).unwrap(),
        "restored image differs"
    );
    restic_check(&dir, &vault);
    assert!(sigterm_and_wait(child).success());
}

/// Issue 19: SIGKILL while garbage collection and prune run (a hard-deleted item's data going, the
/// first pass after each start pruning), at a different moment each round. Every round the vault passes
/// stock `restic check`, no job is left running, and at the end every listed recovery point of the
/// kept items restores byte for byte.
#[test]
fn a_server_killed_during_garbage_collection_and_prune_loses_nothing() {
    const BK: &str = "api-version=2026-10-01";
    const LEN: usize = 12 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut fast = vec!["--policy-interval".to_string(), "1".to_string()];
    fast.extend(grant_args(tmp.path()));
    let serve_fast = |dir: &Path| serve_with(dir, &fast);
    let (mut child, mut url) = serve_fast(&dir);
    let vm_add = |name: &str| {
        let disk = images.join(format!("{name}.raw"));
        std::fs::write(&disk, pattern(name.len() as u64, LEN)).unwrap();
        let mut args = vec![
            "vm",
            "add",
            "-g",
            "home",
            "--name",
            name,
            "--disk",
            disk.to_str().unwrap(),
        ];
        let g = grant_args(tmp.path());
        let g: Vec<&str> = g.iter().map(String::as_str).collect();
        args.extend(g);
        run_json(&args, &dir)
    };
    let vm = vm_add("keep0");
    vm_add("keep1");
    let files = tmp.path().join("restores");
    let mut share_args = vec![
        "share",
        "add",
        "-g",
        "home",
        "--account",
        "restores1",
        "--path",
        files.to_str().unwrap(),
        "--share",
        "unused",
    ];
    let g = grant_args(tmp.path());
    share_args.extend(g.iter().map(String::as_str));
    run_json(&share_args, &dir);
    let sub = vm["id"].as_str().unwrap().split('/').nth(2).unwrap().to_string();
    let rg = format!("/subscriptions/{sub}/resourceGroups/home");
    let vault = format!("{rg}/providers/Microsoft.RecoveryServices/vaults/v1");
    let item = |vm: &str| {
        format!("{vault}/backupFabrics/Azure/protectionContainers/IaasVMContainer;iaasvmcontainerv2;home;{vm}/protectedItems/VM;iaasvmcontainerv2;home;{vm}")
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let enable = serde_json::json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": format!("{vault}/backupPolicies/DefaultPolicy")}});
    let protect = |vm: &str| (format!("{}?{BK}", item(vm)), enable.clone());
    rt.block_on(async {
        let api = Api::new(&dir, &url).await;
        let (st, b) = api
            .call(
                "PUT",
                &format!("{vault}?{BK}"),
                Some(serde_json::json!({"location": "westus", "sku": {"name": "Standard"}})),
            )
            .await;
        assert_eq!(st, 201, "{b}");
        let (st, b) = api
            .call(
                "PATCH",
                &format!("{vault}/backupconfig/vaultconfig?{BK}"),
                Some(serde_json::json!({"properties": {"softDeleteFeatureState": "Disabled"}})),
            )
            .await;
        assert_eq!(st, 200, "{b}");
        for vm in ["keep0", "keep1"] {
            let (path, body) = protect(vm);
            put_accepted(&api, &path, body).await;
        }
    });
    // recovery point name -> (vm, expected bytes seed)
    let mut expected: Vec<(String, String, u64)> = vec![];
    // Five moments in the suite; RSVAULT_KILL_ROUNDS=N runs N rounds over the same moments.
    for (round, delay_ms) in kill_moments(&[0, 150, 400, 800, 1200]).into_iter().enumerate() {
        let doomed = format!("gone{round}");
        vm_add(&doomed);
        rt.block_on(async {
            let api = Api::new(&dir, &url).await;
            let (path, body) = protect(&doomed);
            put_accepted(&api, &path, body).await;
            for (i, vm) in ["keep0", "keep1"].into_iter().enumerate() {
                let seed = 100 * round as u64 + i as u64 + 1;
                std::fs::write(images.join(format!("{vm}.raw")), pattern(seed, LEN)).unwrap();
                let names = |v: &Value| -> Vec<String> {
                    v["value"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["name"].as_str().unwrap().to_string())
                        .collect()
                };
                let (_, before) = api
                    .call("GET", &format!("{}/recoveryPoints?{BK}", item(vm)), None)
                    .await;
                let job = post_job(
                    &api,
                    format!("{}/backup?{BK}", item(vm)),
                    serde_json::json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
                )
                .await;
                let j = wait_job(&api, &vault, &job).await;
                assert_eq!(j["properties"]["status"], "Completed", "{j}");
                let (_, after) = api
                    .call("GET", &format!("{}/recoveryPoints?{BK}", item(vm)), None)
                    .await;
                let before = names(&before);
                let new: Vec<String> = names(&after).into_iter().filter(|n| !before.contains(n)).collect();
                assert_eq!(new.len(), 1, "{new:?}");
                expected.push((new[0].clone(), vm.to_string(), seed));
            }
            let job = post_job(
                &api,
                format!("{}/backup?{BK}", item(&doomed)),
                serde_json::json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
            )
            .await;
            assert_eq!(wait_job(&api, &vault, &job).await["properties"]["status"], "Completed");
            // Hard delete (soft delete is off): the next pass collects its snapshot and data.
            let (st, b) = api.call("DELETE", &format!("{}?{BK}", item(&doomed)), None).await;
            assert!((200..300).contains(&st), "{st} {b}");
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        });
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        restic_check(&dir, &vault);
        (child, url) = serve_fast(&dir);
        rt.block_on(async {
            let api = Api::new(&dir, &url).await;
            let (_, jobs) = api.call("GET", &format!("{vault}/backupJobs?{BK}"), None).await;
            for j in jobs["value"].as_array().unwrap() {
                assert_ne!(
                    j["properties"]["status"], "InProgress",
                    "round {round}: a job left running: {j}"
                );
            }
        });
    }
    // Every point of the kept items is listed and restores byte for byte.
    rt.block_on(async {
        let api = Api::new(&dir, &url).await;
        for vm in ["keep0", "keep1"] {
            let (_, rps) = api.call("GET", &format!("{}/recoveryPoints?{BK}", item(vm)), None).await;
            let listed: Vec<String> = rps["value"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect();
            let want: Vec<&(String, String, u64)> = expected.iter().filter(|(_, v, _)| v == vm).collect();
            assert_eq!(listed.len(), want.len(), "{vm}: points lost: {listed:?}");
            for (rp, _, seed) in want {
                assert!(listed.contains(rp), "{vm}: {rp} is no longer listed");
                let body = serde_json::json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryType": "RestoreDisks", "recoveryPointId": rp,
                    "sourceResourceId": format!("{rg}/providers/Microsoft.Compute/virtualMachines/{vm}"),
                    "storageAccountId": format!("{rg}/providers/Microsoft.Storage/storageAccounts/restores1"), "region": "westus"}});
                let before: std::collections::HashSet<_> = std::fs::read_dir(&files).unwrap().map(|e| e.unwrap().path()).collect();
                let job = post_job(&api, format!("{}/recoveryPoints/{rp}/restore?{BK}", item(vm)), body).await;
                let j = wait_job(&api, &vault, &job).await;
                assert_eq!(j["properties"]["status"], "Completed", "{vm} {rp}: {j}");
                let new_dir = std::fs::read_dir(&files).unwrap().map(|e| e.unwrap().path()).find(|p| !before.contains(p)).unwrap();
                let image = std::fs::read_dir(&new_dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .find(|p| !is_restore_config(p))
                    .unwrap();
                assert!(std::fs::read(&image).unwrap() == pattern(*seed, LEN), "{vm} {rp}: restored bytes differ");
                std::fs::remove_dir_all(&new_dir).unwrap();
            }
        }
    });
    restic_check(&dir, &vault);
    assert!(sigterm_and_wait(child).success());
}

/// `--allow-path ROOT` for `serve`, `vm add` and `share add`: the operator's grant of the test's host
/// directories (when this build has host grants).
fn grant_args(root: &Path) -> Vec<String> {
    let help = bin().args(["serve", "--help"]).output().unwrap();
    if String::from_utf8_lossy(&help.stdout).contains("--allow-path") {
        vec!["--allow-path".into(), root.display().to_string()]
    } else {
        vec![]
    }
}

/// The kill delays (ms) of a kill test: `moments` once, or `RSVAULT_KILL_ROUNDS` rounds cycling
/// through them.
fn kill_moments(moments: &[u64]) -> Vec<u64> {
    let n = std::env::var("RSVAULT_KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(moments.len());
    moments.iter().copied().cycle().take(n).collect()
}

/// Polls `rsvault nodes --json` until `ok` holds of its answer (at most 20 s).
fn nodes_until(dir: &Path, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = run_json(&["nodes", "--json"], dir);
        if ok(&v) {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn node<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["nodes"].as_array()?.iter().find(|n| n["node"] == name)
}

fn worker_names(n: &Value) -> Vec<String> {
    n["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter_map(|w| w["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `rsvault nodes` shows each node that reported into the store, when it was last seen, its
/// workers' statuses and the scheduler's leader; `--role jobs` runs the workers and listens on
/// nothing, `--role api` runs no job worker and no scheduler.
#[test]
fn nodes_shows_each_nodes_workers_and_the_scheduler_leader_for_every_role() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (child, line) = serve_line(&dir, &["--node-id=alpha", "--max-jobs=2"]);
    assert!(line.starts_with("rsvault listening on "), "{line}");
    let v = nodes_until(&dir, "alpha reports its workers and leads", |v| {
        v["schedulerLeader"]["node"] == "alpha"
            && node(v, "alpha").is_some_and(|n| {
                n["workers"]
                    .as_array()
                    .is_some_and(|ws| ws.iter().any(|w| w["name"] == "scheduler" && w["lastRun"].is_string()))
            })
    });
    let a = node(&v, "alpha").unwrap();
    assert_eq!(a["role"], "all", "{a:#}");
    assert_eq!(a["schedulerLeader"], true);
    assert_eq!(a["runningJobs"], 0);
    assert!(a["secondsSinceSeen"].as_i64().unwrap() < 10, "{a:#}");
    assert_eq!(
        worker_names(a),
        ["job-0", "job-1", "job-leases", "node-report", "scheduler"],
        "{a:#}"
    );
    let sched = a["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "scheduler")
        .unwrap();
    assert_eq!(sched["detail"], "leader", "{sched:#}");
    assert!(sched.get("lastError").is_none(), "{sched:#}");
    assert!(sigterm_and_wait(child).success());
    // A graceful stop hands the scheduler back and leaves the node's last report: workers stopped.
    let v = run_json(&["nodes", "--json"], &dir);
    assert!(v["schedulerLeader"].is_null(), "{v:#}");
    let a = node(&v, "alpha").unwrap();
    for w in a["workers"].as_array().unwrap() {
        if w["name"] != "node-report" {
            assert_eq!(w["state"], "stopped", "{a:#}");
        }
    }

    // A jobs node: no listener, the same workers, and it takes the scheduler.
    let (child, line) = serve_line(&dir, &["--node-id=beta", "--role=jobs"]);
    assert_eq!(line, "rsvault running jobs (role jobs: no listener)");
    let v = nodes_until(&dir, "beta leads", |v| {
        v["schedulerLeader"]["node"] == "beta" && node(v, "beta").is_some()
    });
    let b = node(&v, "beta").unwrap();
    assert_eq!(b["role"], "jobs");
    assert_eq!(
        worker_names(b),
        ["job-0", "job-1", "job-leases", "node-report", "scheduler"]
    );
    assert!(sigterm_and_wait(child).success());

    // An API node: it serves, and reports itself, but runs no job worker and no scheduler.
    let (child, line) = serve_line(&dir, &["--node-id=gamma", "--role=api"]);
    assert!(line.starts_with("rsvault listening on "), "{line}");
    let v = nodes_until(&dir, "gamma reports", |v| node(v, "gamma").is_some());
    let g = node(&v, "gamma").unwrap();
    assert_eq!(g["role"], "api");
    assert_eq!(worker_names(g), ["node-report"]);
    assert!(v["schedulerLeader"].is_null(), "{v:#}");
    // The table names every node and the leader line.
    let out = bin().args(["nodes", "--data-dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("scheduler leader: none\n"), "{text}");
    for n in ["alpha", "beta", "gamma"] {
        assert!(text.contains(&format!("node {n}  role ")), "{text}");
    }
    assert!(text.contains("scheduler    stopped"), "{text}");
    assert!(sigterm_and_wait(child).success());
}

/// The VM configuration and template a RestoreDisks job leaves beside the images it restores.
fn is_restore_config(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "json")
}
