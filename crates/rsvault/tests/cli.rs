//! The `rsvault` binary as an operator uses it: `serve` in a subprocess (ready line, graceful SIGTERM,
//! restart), `principal` and `keys` against a live data dir, and `env`.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rsvault"))
}

fn serve(dir: &Path) -> (Child, String) {
    let mut child = bin()
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    reader.read_line(&mut line).unwrap();
    // Keep reading (and so keep the pipe open) for as long as the server lives.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let url = line
        .trim()
        .strip_prefix("rsvault listening on ")
        .unwrap_or_else(|| panic!("ready line: {line}"))
        .to_string();
    (child, url)
}

fn sigterm_and_wait(mut child: Child) -> std::process::ExitStatus {
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
    let (child, _url) = serve(&dir);
    let os = tmp.path().join("os.raw");
    std::fs::write(&os, vec![0u8; 1 << 20]).unwrap();
    let data = tmp.path().join("data.qcow2");
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
        ],
        &dir,
    );
    assert_eq!(vm["type"], "Microsoft.Compute/virtualMachines");
    assert!(vm["id"]
        .as_str()
        .unwrap()
        .ends_with("/resourceGroups/home/providers/Microsoft.Compute/virtualMachines/nas1"));
    assert_eq!(vm["properties"]["storageProfile"]["dataDisks"][0]["diskSizeGB"], 2);
    let missing = bin()
        .args([
            "vm",
            "add",
            "-g",
            "home",
            "--name",
            "nas2",
            "--disk",
            "/nonexistent/disk.img",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot be read"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let files = tmp.path().join("files");
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
        ],
        &dir,
    );
    assert_eq!(share["type"], "Microsoft.Storage/storageAccounts/fileServices/shares");
    assert!(files.join("docs").is_dir());
    assert!(sigterm_and_wait(child).success());
}
