//! The HTTPS listener: first-start bootstrap, TLS from the data dir's CA, one task per connection, and
//! graceful shutdown (stop accepting, let in-flight requests finish, bounded by a deadline).
//!
//! Starting is two steps: [`open`] bootstraps the store and makes the node's control plane (with its
//! data plane), and [`Opened::serve`] starts the listener. The binary starts the node's job runner
//! and scheduler (`rsvault_control::node::Node`) between the two, so jobs a crash interrupted are
//! settled before the API accepts anything; [`start`] is both steps, the API alone.
//!
//! Every connection lives under [`crate::limits`]: admitted only under the total and per-address caps
//! (else closed right after accept), handshake and headers within the header timeout, closed when idle,
//! HTTP/2 with a small stream cap and bounded windows and header lists. Accept errors (say, out of file
//! descriptors) are logged at most once a second, with a count.

use crate::limits::{Activity, ConnLimiter, Guards, Limits, LogEvery};
use crate::pipeline::{self, State};
use crate::traffic::Recorder;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rsvault_control::datadir::{Bootstrap, DataDir};
use rsvault_control::dataplane::{DataPlane, EngineOverride, JobLimits};
use rsvault_control::hostaccess::HostGrants;
use rsvault_control::{Control, Settings};
use rsvault_core::time::SharedClock;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How `rsvault serve` is configured.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The metadata store; `None` is the data dir's SQLite file (`meta.db`).
    pub store: Option<rsvault_store::StoreLocation>,
    pub listen: SocketAddr,
    /// The base URL clients use; derived from `listen` when absent.
    pub public_url: Option<String>,
    /// Accept only published api-versions.
    pub strict_api_versions: bool,
    /// `Retry-After` seconds on long-running operations.
    pub retry_after_secs: u64,
    /// Record every ARM exchange here (oav's traffic format).
    pub traffic_dir: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub page_size: usize,
    pub token_lifetime_secs: i64,
    /// Extra names or addresses for the server certificate.
    pub tls_hosts: Vec<String>,
    /// A certificate chain and its key the operator provides (`--tls-cert`, `--tls-key`), served
    /// instead of the data dir's own.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// How many backups and restores run at once (on a node that runs jobs).
    pub jobs: JobLimits,
    /// How often the scheduler runs a policy pass (scheduled backups, retention, purge, GC), on a
    /// node that runs jobs (the binary starts it: `rsvault_control::node::Node`).
    pub policy_interval: Duration,
    /// Run this engine instead of the restic-format one (tests wrap the real engine to inject faults).
    pub engine: Option<EngineOverride>,
    /// Connection, body, timeout and token-endpoint limits.
    pub limits: Limits,
    /// The host roots requests may name (`--allow-path`); none by default: no grant, no host path.
    /// The data dir is never granted, whatever these say.
    pub host_grants: HostGrants,
    /// Where vaults' repositories live (`--storage FILE`); by default, the data dir.
    pub storage: rsvault_control::storage::StorageTargets,
    /// This node's name among the nodes sharing the store; by default `DATA_DIR/node-id`.
    pub node_id: Option<String>,
    /// The server key file (`--server-key`); by default `DATA_DIR/engine.key`. Nodes sharing a store
    /// must use the same one.
    pub server_key: Option<PathBuf>,
}

impl Config {
    /// Defaults for a data dir, as the README documents them.
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            store: None,
            listen: "127.0.0.1:8443".parse().expect("valid address"),
            public_url: None,
            strict_api_versions: false,
            retry_after_secs: 1,
            traffic_dir: None,
            max_body_bytes: 4 * 1024 * 1024,
            page_size: 200,
            token_lifetime_secs: 3600,
            tls_hosts: vec![],
            tls_files: None,
            jobs: JobLimits::default(),
            policy_interval: Duration::from_secs(30),
            engine: None,
            limits: Limits::default(),
            host_grants: HostGrants::default(),
            storage: Default::default(),
            node_id: None,
            server_key: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Domain(#[from] rsvault_core::Error),
}

/// A started server.
pub struct Running {
    pub local_addr: SocketAddr,
    pub base_url: String,
    /// The first Owner's credentials, on the node that bootstrapped the store.
    pub bootstrap: Option<Bootstrap>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    control: Arc<Control>,
}

impl Running {
    /// Stops accepting, waits for in-flight requests (at most 10 s), and returns. (The node's jobs,
    /// if it runs them, are stopped by whoever started them, after this.)
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops (after [`Running::shutdown`] from elsewhere, or forever).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }

    /// The server's control plane (for the binary's and tests' direct calls).
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// A handle that can stop the server.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

fn base_url(config: &Config, addr: SocketAddr) -> String {
    if let Some(u) = &config.public_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "localhost".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("https://{host}:{}", addr.port())
}

/// The operator's certificate chain and key (`--tls-cert`, `--tls-key`); the key must be private.
fn operator_tls(
    ca_pem_path: PathBuf,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rsvault_identity::pki::TlsMaterial, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let read =
        |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| StartError::Tls(format!("{}: {e}", p.display())));
    let mode = std::fs::metadata(key)
        .map_err(|e| StartError::Tls(format!("{}: {e}", key.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(StartError::Tls(format!(
            "{} is accessible by group or others (mode {:o}); expected 0600",
            key.display(),
            mode & 0o777
        )));
    }
    Ok(rsvault_identity::pki::TlsMaterial {
        ca_pem_path,
        cert_chain_pem: read(cert)?,
        key_pem: read(key)?,
    })
}

fn tls_config(material: &rsvault_identity::pki::TlsMaterial) -> Result<rustls::ServerConfig, StartError> {
    let certs = rustls_pemfile::certs(&mut material.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut material.key_pem.as_bytes())
        .map_err(|e| StartError::Tls(e.to_string()))?
        .ok_or_else(|| StartError::Tls("no private key in server-key.pem".into()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Runs store work off the async threads: the PostgreSQL client is synchronous and panics on them.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StartError> + Send + 'static,
) -> Result<T, StartError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StartError::Domain(rsvault_core::Error::internal(format!("start-up task: {e}"))))?
}

/// Bootstraps the data dir if needed and serves the API (no jobs: see [`open`]).
pub async fn start(config: Config, clock: SharedClock) -> Result<Running, StartError> {
    open(config, clock, true).await?.serve().await
}

/// A node whose store and control plane are ready, not yet serving.
pub struct Opened {
    config: Config,
    dir: DataDir,
    control: Arc<Control>,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    base: String,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("local_addr", &self.local_addr)
            .field("base", &self.base)
            .finish()
    }
}

/// Bootstraps the data dir if needed, opens the store, and makes the node's control plane with its
/// data plane (server key checked against the store's, signing keys sealed, test clock resumed).
/// With `listen`, binds the listen address (port 0 picks one) for [`Opened::serve`]; without, the
/// node serves nothing (`--role jobs`) and its URLs come from `public_url` or `listen`.
pub async fn open(config: Config, clock: SharedClock, listen: bool) -> Result<Opened, StartError> {
    let dir = match &config.store {
        Some(location) => DataDir::new(&config.data_dir).with_store(location.clone()),
        None => DataDir::new(&config.data_dir),
    };
    let store = {
        let (dir, now, key) = (dir.clone(), clock.now(), config.server_key.clone());
        blocking(move || Ok(dir.init(now, key.as_deref())?)).await?
    };
    let (listener, local_addr) = if listen {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        (Some(listener), local_addr)
    } else {
        (None, config.listen)
    };
    let base = base_url(&config, local_addr);

    let control = {
        let (config, base) = (config.clone(), base.clone());
        blocking(move || {
            let tenant = store
                .read(|db| db.meta(rsvault_control::datadir::META_TENANT))
                .map_err(rsvault_core::Error::from)?
                .unwrap_or_default();
            let control = Arc::new(
                Control::new(
                    store,
                    clock,
                    Settings {
                        page_size: config.page_size,
                        token_lifetime_secs: config.token_lifetime_secs,
                        issuer_url: format!("{base}/{tenant}/v2.0"),
                    },
                )?
                .with_data_plane(
                    match &config.engine {
                        Some(e) => DataPlane::with_engine(e.0.clone(), &config.data_dir, config.jobs)?,
                        None => DataPlane::open(&config.data_dir, config.jobs)?,
                    }
                    .with_storage(config.storage.clone())
                    .with_node_id(config.node_id.clone())
                    .with_server_key(config.server_key.as_deref())?,
                )
                .with_host_grants(config.host_grants.clone().excluding(&config.data_dir)),
            );
            control.check_server_key()?;
            control.seal_signing_keys()?;
            control.resume_test_clock()?;
            Ok(control)
        })
        .await?
    };
    if config.host_grants.is_empty() {
        tracing::warn!(
            "no --allow-path grant: requests can name no host path (no VM disks, storage accounts or restores)"
        );
    }
    for g in config.host_grants.grants() {
        tracing::info!(root = %g.root().display(), scope = g.scope().unwrap_or("/"), "host path granted");
    }
    Ok(Opened {
        config,
        dir,
        control,
        listener,
        local_addr,
        base,
    })
}

impl Opened {
    /// The node's control plane.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// The base URL clients use.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Starts serving the API: TLS from the data dir's CA (or the operator's certificate), the
    /// bootstrap file's URLs, the accept loop.
    pub async fn serve(self) -> Result<Running, StartError> {
        let Opened {
            config,
            dir,
            control,
            listener,
            local_addr,
            base,
        } = self;
        let listener = listener.ok_or_else(|| {
            StartError::Domain(rsvault_core::Error::internal("this node was opened without a listener"))
        })?;
        let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        if !local_addr.ip().is_unspecified() && !local_addr.ip().is_loopback() {
            hosts.push(local_addr.ip().to_string());
        }
        if let Some(h) = url::Url::parse(&base)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        {
            hosts.push(h);
        }
        hosts.extend(config.tls_hosts.iter().cloned());
        hosts.sort();
        hosts.dedup();
        let mut material =
            rsvault_identity::pki::ensure(&config.data_dir, &hosts).map_err(|e| StartError::Tls(e.to_string()))?;
        if let Some((cert, key)) = &config.tls_files {
            material = operator_tls(material.ca_pem_path, cert, key)?;
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&material)?));
        let bootstrap = dir.publish_urls(&base)?;
        let recorder = match &config.traffic_dir {
            Some(d) => Some(Recorder::new(d).map_err(|e| rsvault_core::Error::internal(format!("traffic dir: {e}")))?),
            None => None,
        };
        let state = Arc::new(State {
            control: control.clone(),
            guards: Guards::new(&config.limits),
            config: config.clone(),
            base_url: base.clone(),
            recorder,
        });

        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, acceptor, state, rx));
        tracing::info!(%local_addr, base_url = %base, "rsvault listening");
        Ok(Running {
            local_addr,
            base_url: base,
            bootstrap,
            shutdown: tx,
            task,
            control,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let limits = state.config.limits.clone();
    let admit = ConnLimiter::new(limits.max_connections, limits.max_connections_per_addr);
    let accept_errors = LogEvery::new(Duration::from_secs(1));
    let refused = LogEvery::new(Duration::from_secs(1));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        if let Some(n) = accept_errors.hit() {
                            tracing::warn!(error = %e, count = n, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = admit.admit(peer.ip()) else {
                    if let Some(n) = refused.hit() {
                        tracing::warn!(%peer, count = n, open = admit.open(), "connection refused: too many connections");
                    }
                    drop(tcp);
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = state.clone();
                let stop = stop.clone();
                let limits = limits.clone();
                conns.spawn(async move {
                    let _slot = slot;
                    serve_connection(tcp, peer, acceptor, state, limits, stop).await;
                });
            }
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = conns.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!(open = conns.len(), "shutdown deadline reached; closing remaining connections");
                conns.abort_all();
                break;
            }
        }
    }
    tracing::info!("rsvault stopped");
}

/// How long an idle connection told to close may take to finish what it is writing.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let activity = Activity::new();
    let svc = {
        let activity = activity.clone();
        service_fn(move |req: hyper::Request<Incoming>| {
            let state = state.clone();
            let in_flight = activity.start();
            async move {
                let resp = pipeline::handle(state, peer, req).await;
                drop(in_flight);
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(64 * 1024)
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_pending_accept_reset_streams(limits.h2_max_streams as usize)
        .keep_alive_interval(limits.idle_timeout / 2)
        .keep_alive_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let idle_at = activity.idle_deadline(limits.header_timeout, limits.idle_timeout);
        // Look again at least every half of the shorter timeout: activity moves the deadline, and a
        // request in flight has its own limits (body timeout, handler).
        let tick = std::time::Instant::now() + limits.idle_timeout.min(limits.header_timeout) / 2;
        let wake = idle_at.map_or(tick, |d| d.min(tick));
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.changed() => {
                stopping = true;
                break;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let still_idle = activity
                    .idle_deadline(limits.header_timeout, limits.idle_timeout)
                    .is_some_and(|d| d <= std::time::Instant::now());
                if still_idle {
                    tracing::debug!(%peer, "closing an idle connection");
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    if stopping {
        // In-flight requests finish; the server's own shutdown deadline bounds this.
        let _ = conn.await;
    } else {
        let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
    }
}
