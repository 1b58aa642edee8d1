//! Starts a real rsvault server in-process and talks to it over HTTPS: a node as `rsvault serve`
//! starts one by default (`--role all`): the store and control plane ([`rsvault_api::open`]), the
//! node's job runner and scheduler ([`Node::start`]), then the API; stopped in the same order as
//! `serve` stops (the API, then the node's workers).
//!
//! A test server's temp dir holds `data/` (the data dir) and `host/`, the one host root it grants
//! (`--allow-path`): tests put disk images and storage account directories below
//! [`Server::host_dir`] (e.g. with [`Server::tempdir`]). [`start_ungranted`] starts one without
//! any grant.
//!
//! With `RSVAULT_TEST_API_STORE=postgres` every test server keeps its metadata store in a schema of its
//! own in `RSVAULT_TEST_PG_URL`'s database (one schema per data dir, so a restarted server finds its
//! store again); otherwise in the data dir's SQLite file, as `rsvault serve` does by default. Tests reach
//! the store only through [`Server::offline`] and [`off_async`], which run it on a thread of its own: the
//! PostgreSQL client must not run on the test's async thread.

use reqwest::{Client, Method, Response};
use rsvault_api::{Config, Running};
use rsvault_control::datadir::Bootstrap;
use rsvault_control::hostaccess::{Grant, HostGrants};
use rsvault_control::node::{Node, Role};
use rsvault_control::{Control, Settings};
use rsvault_core::time::{SharedClock, SystemClock};
use rsvault_store::StoreLocation;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const API: &str = "api-version=2026-11-01";

pub struct Server {
    pub running: Option<Running>,
    /// The node's job runner and scheduler.
    pub node: Option<Node>,
    pub base: String,
    pub boot: Bootstrap,
    pub http: Client,
    pub dir: PathBuf,
    pub token: String,
    _tmp: Option<tempfile::TempDir>,
}

pub fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

pub async fn start_with(config: Config, tmp: Option<tempfile::TempDir>) -> Server {
    start_with_clock(config, tmp, clock()).await
}

/// Runs `f` on a thread of its own (store calls: the PostgreSQL client panics on an async thread).
pub fn off_async<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|sc| match sc.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Whether test servers keep their stores in PostgreSQL (`RSVAULT_TEST_API_STORE=postgres`).
pub fn on_postgres() -> bool {
    match std::env::var("RSVAULT_TEST_API_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("RSVAULT_TEST_API_STORE={other}: expected postgres or sqlite"),
    }
}

/// The store of the server whose data dir is `data_dir`: its SQLite file, or (on PostgreSQL) a schema
/// made for that data dir the first time it is asked for.
pub fn store_location(data_dir: &Path) -> StoreLocation {
    if !on_postgres() {
        return StoreLocation::Sqlite(data_dir.join("meta.db"));
    }
    static STORES: Mutex<Option<HashMap<PathBuf, StoreLocation>>> = Mutex::new(None);
    let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
    let stores = stores.get_or_insert_with(HashMap::new);
    if let Some(l) = stores.get(data_dir) {
        return l.clone();
    }
    let url = std::env::var("RSVAULT_TEST_PG_URL").expect("RSVAULT_TEST_API_STORE=postgres needs RSVAULT_TEST_PG_URL");
    let schema = format!("api_{}", uuid::Uuid::new_v4().simple());
    off_async(|| {
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("the test database answers");
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
    });
    let sep = if url.contains('?') { '&' } else { '?' };
    let l = StoreLocation::Postgres(format!("{url}{sep}options=-csearch_path%3D{schema}"));
    stores.insert(data_dir.to_path_buf(), l.clone());
    l
}

pub async fn start_with_clock(config: Config, tmp: Option<tempfile::TempDir>, clock: SharedClock) -> Server {
    start_node(config, tmp, clock, None).await
}

/// A second node beside `first`: its own data dir, listener and caches, on `first`'s store with its server
/// key (as `rsvault serve --store … --server-key …` starts one), signed in as `first`'s Owner. Its own
/// URL is its issuer, so tokens it issues are its own.
pub async fn start_beside(first: &Server) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path().join("data"));
    config.store = Some(store_location(&first.dir));
    config.server_key = Some(first.dir.join("engine.key"));
    start_node(config, Some(tmp), clock(), Some(first.boot.clone())).await
}

async fn start_node(
    mut config: Config,
    tmp: Option<tempfile::TempDir>,
    clock: SharedClock,
    boot: Option<Bootstrap>,
) -> Server {
    if config.store.is_none() && on_postgres() {
        config.store = Some(store_location(&config.data_dir));
    }
    let dir = config.data_dir.clone();
    let interval = config.policy_interval;
    let opened = rsvault_api::open(config, clock, true).await.expect("server starts");
    let control = opened.control();
    let node = tokio::task::spawn_blocking(move || Node::start(control, Role::All, interval))
        .await
        .unwrap()
        .expect("the node's workers start");
    let running = opened.serve().await.expect("server starts");
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let http = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let base = running.base_url.clone();
    let boot = running
        .bootstrap
        .clone()
        .or(boot)
        .expect("the store was bootstrapped here");
    let mut s = Server {
        running: Some(running),
        node: Some(node),
        base,
        boot,
        http,
        dir,
        token: String::new(),
        _tmp: tmp,
    };
    s.token = s
        .token_for(&s.boot.client_id.clone(), &s.boot.client_secret.clone())
        .await;
    s
}

/// The host root granted to a test server whose data dir is `data_dir`: `host/` beside it.
pub fn host_root(data_dir: &Path) -> PathBuf {
    data_dir.parent().expect("a data dir has a parent").join("host")
}

/// A test server's configuration: an ephemeral port and its host root (created) granted.
pub fn test_config(data_dir: PathBuf) -> Config {
    let host = host_root(&data_dir);
    std::fs::create_dir_all(&host).unwrap();
    let mut config = Config::new(data_dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.host_grants = HostGrants::new(vec![Grant::new(&host, None).unwrap()]);
    config
}

pub async fn start() -> Server {
    let tmp = tempfile::tempdir().unwrap();
    start_with(test_config(tmp.path().join("data")), Some(tmp)).await
}

/// A server with no `--allow-path` at all.
pub async fn start_ungranted() -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::new(tmp.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    start_with(config, Some(tmp)).await
}

impl Server {
    pub fn sub(&self) -> &str {
        &self.boot.subscription_id
    }

    /// The host root this server grants (see [`test_config`]).
    pub fn host_dir(&self) -> PathBuf {
        host_root(&self.dir)
    }

    /// A fresh directory inside the granted host root.
    pub fn tempdir(&self) -> tempfile::TempDir {
        tempfile::tempdir_in(self.host_dir()).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A token from the server's own token endpoint.
    pub async fn token_for(&self, client_id: &str, secret: &str) -> String {
        let r = self
            .http
            .post(self.url(&format!("/{}/oauth2/v2.0/token", self.boot.tenant_id)))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("scope", "https://management.azure.com/.default"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A second control plane over the same data dir (what `rsvault principal …` does), given to `f` on a
    /// thread of its own.
    pub fn offline<T: Send>(&self, f: impl FnOnce(&Control) -> T + Send) -> T {
        let dir = rsvault_control::datadir::DataDir::new(&self.dir).with_store(store_location(&self.dir));
        off_async(move || {
            let store = dir.open_existing().unwrap();
            let c = Control::new(
                store,
                clock(),
                Settings {
                    page_size: 200,
                    token_lifetime_secs: 3600,
                    issuer_url: String::new(),
                },
            )
            .unwrap();
            f(&c)
        })
    }

    /// A principal with a role at a scope, and its token.
    pub async fn principal(&self, role: Option<&str>, scope: &str) -> String {
        let p = self
            .offline(|c| c.create_principal("test", role.map(|r| (r, scope))))
            .unwrap();
        self.token_for(&p.client_id, &p.client_secret).await
    }

    pub async fn call_as(&self, token: Option<&str>, method: &str, path: &str, body: Option<&Value>) -> Response {
        let mut req = self
            .http
            .request(Method::from_bytes(method.as_bytes()).unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await.unwrap()
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let r = self.call_as(Some(&self.token), method, path, body).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            },
        )
    }

    pub fn rg_path(&self, rg: &str) -> String {
        format!("/subscriptions/{}/resourceGroups/{rg}", self.sub())
    }

    pub fn vault_path(&self, rg: &str, v: &str) -> String {
        format!("{}/providers/Microsoft.RecoveryServices/vaults/{v}", self.rg_path(rg))
    }

    pub async fn make_group(&self, rg: &str) {
        let (s, b) = self
            .call(
                "PUT",
                &format!("{}?api-version=2021-04-01", self.rg_path(rg)),
                Some(&serde_json::json!({"location": "westus"})),
            )
            .await;
        assert!(s == 201 || s == 200, "{s} {b}");
    }

    pub async fn make_vault(&self, rg: &str, v: &str) -> Value {
        let (s, b) = self
            .call(
                "PUT",
                &format!("{}?{API}", self.vault_path(rg, v)),
                Some(&serde_json::json!({"location": "westus", "sku": {"name": "Standard"}})),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        b
    }

    pub async fn stop(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        if let Some(n) = self.node.take() {
            tokio::task::spawn_blocking(move || n.stop()).await.unwrap();
        }
        (self.dir.clone(), self._tmp.take())
    }
}

impl Drop for Server {
    /// A test that ends without [`Server::stop`] stops the server from accepting and its node's
    /// workers on a thread of their own: left running, they kept store connections open for the
    /// rest of the test binary (the PostgreSQL run ran out of connection slots).
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            let _ = r.stopper().send(true);
        }
        if let Some(n) = self.node.take() {
            let _ = std::thread::Builder::new()
                .name("test-server-stop".into())
                .spawn(move || n.stop());
        }
    }
}

/// Asserts an ARM error envelope with the given status and code.
pub fn assert_arm_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "error without message: {body}");
}

/// The disk images restores wrote into the restore directories below `dir`, without the VM
/// configuration, template and domain definition a RestoreDisks job leaves beside them
/// (`config-*.json`, `azuredeploy*.json`, `domain-*.xml`), sorted by path.
pub fn restored_images(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "json" && e != "xml"))
        .collect();
    out.sort();
    out
}
