//! `rsvault`: a thin command line over the library crates.
//!
//! `serve` runs a node: the HTTPS service and the job engine (`--role all`, the default), or one of
//! them (`--role api`, `--role jobs`); `nodes` shows the nodes sharing the store and their workers;
//! `principal` manages service principals; `keys rotate` rotates the
//! token-signing key; `env` prints client set-up for a data dir; `vm add` / `share add` declare local
//! workloads without ARM; `restic-env` prints what stock `restic` needs to open a vault. `serve`,
//! `vm add` and `share add` take `--allow-path DIR[=SCOPE]`: the host roots their paths may use
//! (`rsvault_control::hostaccess`; no grant, no host path), and `--allow-libvirt URI=GROUP-SCOPE`:
//! the libvirt connections whose domains a container refresh declares as VMs.
//!
//! Every command takes the metadata store from `--store URL`, `RSVAULT_STORE_URL` or `--store-file FILE`
//! (a 0600 file holding the URL: the password stays out of the process list and the environment); by
//! default it is the data dir's SQLite file. Store URLs are logged only with their password redacted.
//! Only `serve` runs an async runtime: the other commands call the (synchronous) store on the main thread.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rsvault_control::datadir::DataDir;
use rsvault_control::hostaccess::{Grant, HostGrants, LibvirtGrant};
use rsvault_control::node::{Node, Role};
use rsvault_control::{Control, Settings};
use rsvault_core::time::{Clock, SharedClock, SubsecRound, SystemClock, TestClock};
use rsvault_store::StoreLocation;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "rsvault",
    version,
    about = "A self-hosted backup service that speaks the Azure Recovery Services Backup API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DataDirArg {
    /// The data dir (metadata store, TLS material, bootstrap.json).
    #[arg(long, env = "RSVAULT_DATA_DIR", default_value = "rsvault-data")]
    data_dir: PathBuf,
    /// The metadata store, when not the data dir's SQLite file: `postgres://USER:PASSWORD@HOST:PORT/DB`.
    /// Prefer RSVAULT_STORE_URL or --store-file: a command line is visible to every local user.
    #[arg(long, env = "RSVAULT_STORE_URL", hide_env_values = true, value_name = "URL")]
    store: Option<String>,
    /// A file (mode 0600, owned by this user) holding the store URL.
    #[arg(long, conflicts_with = "store", value_name = "FILE")]
    store_file: Option<PathBuf>,
}

impl DataDirArg {
    /// The store these arguments name, if any (else the data dir's SQLite file).
    fn store_location(&self) -> Result<Option<StoreLocation>> {
        if let Some(url) = &self.store {
            return Ok(Some(StoreLocation::parse(url)));
        }
        let Some(file) = &self.store_file else { return Ok(None) };
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(file).with_context(|| format!("--store-file {}", file.display()))?;
        if meta.mode() & 0o077 != 0 {
            anyhow::bail!(
                "--store-file {} is readable by others (mode {:o}); chmod 600 it",
                file.display(),
                meta.mode() & 0o777
            );
        }
        let text = std::fs::read_to_string(file).with_context(|| format!("--store-file {}", file.display()))?;
        let url = text.trim();
        anyhow::ensure!(!url.is_empty(), "--store-file {} is empty", file.display());
        Ok(Some(StoreLocation::parse(url)))
    }

    /// The data dir, with its store.
    fn data_dir(&self) -> Result<DataDir> {
        let dir = DataDir::new(&self.data_dir);
        Ok(match self.store_location()? {
            Some(location) => dir.with_store(location),
            None => dir,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(Box<ServeArgs>),
    /// Show the nodes sharing the store: when each was last seen, its workers' statuses, and which
    /// node leads the scheduler.
    Nodes {
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage service principals.
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// Manage token-signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the Python SDK snippet and az CLI commands that work against this server.
    Env(DataDirArg),
    /// Declare local VMs (disk images) without ARM.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Declare local file shares (directories) without ARM.
    #[command(subcommand)]
    Share(ShareCommand),
    /// Print RESTIC_REPOSITORY and RESTIC_PASSWORD lines with which stock `restic` opens a vault.
    ResticEnv {
        #[command(flatten)]
        dir: DataDirArg,
        /// The vault's ARM id (/subscriptions/…/providers/Microsoft.RecoveryServices/vaults/NAME).
        #[arg(long)]
        vault: String,
        /// The server's storage file, for vaults in object storage (as `serve --storage`).
        #[arg(long, env = "RSVAULT_STORAGE")]
        storage: Option<PathBuf>,
        /// The server key file, when the server runs with one (as `serve --server-key`).
        #[arg(long, env = "RSVAULT_SERVER_KEY")]
        server_key: Option<PathBuf>,
    },
}

/// `--allow-path DIR[=SCOPE]`: a host root rsvault may use, for every resource or only those of a
/// subscription or resource group.
#[derive(Args, Clone, Default)]
struct AllowPathArg {
    /// A host directory requests may name (disk images, storage account and share directories,
    /// restore targets), repeatable: `DIR` for every resource, or `DIR=/subscriptions/SUB` or
    /// `DIR=/subscriptions/SUB/resourceGroups/GROUP` for that scope only. No grant, no host path.
    #[arg(long = "allow-path", value_name = "DIR[=SCOPE]", value_parser = parse_grant)]
    allow_path: Vec<Grant>,
    /// A libvirt connection rsvault may use (`virsh -c URI`), repeatable, bound to the resource
    /// group its domains are declared in by a container refresh:
    /// `URI=/subscriptions/SUB/resourceGroups/GROUP` (comma-separated in the environment).
    #[arg(
        long = "allow-libvirt",
        value_name = "URI=GROUP-SCOPE",
        env = "RSVAULT_ALLOW_LIBVIRT",
        value_delimiter = ',',
        value_parser = parse_libvirt_grant
    )]
    allow_libvirt: Vec<LibvirtGrant>,
}

impl AllowPathArg {
    fn host_grants(&self) -> HostGrants {
        HostGrants::new(self.allow_path.clone()).with_libvirt(self.allow_libvirt.clone())
    }
}

fn parse_libvirt_grant(s: &str) -> std::result::Result<LibvirtGrant, String> {
    LibvirtGrant::parse(s)
}

fn parse_grant(s: &str) -> std::result::Result<Grant, String> {
    Grant::parse(s)
}

#[derive(Args)]
struct Placement {
    #[command(flatten)]
    dir: DataDirArg,
    #[command(flatten)]
    grants: AllowPathArg,
    /// Resource group (created when missing).
    #[arg(long, short = 'g')]
    group: String,
    /// Azure region name the resource reports (vaults protect resources of their own region).
    #[arg(long, default_value = "westus")]
    location: String,
    /// Subscription (default: the one created at first start).
    #[arg(long)]
    subscription: Option<String>,
}

#[derive(Subcommand)]
enum VmCommand {
    /// Declare (or replace) a VM: `--disk` once per image, raw or qcow2, the first is the OS disk;
    /// or a running QEMU guest by its `--qmp` socket (its disks discovered over QMP).
    Add {
        #[command(flatten)]
        at: Placement,
        #[arg(long)]
        name: String,
        #[arg(long = "disk", required_unless_present = "qmp", conflicts_with = "qmp")]
        disks: Vec<PathBuf>,
        /// A running QEMU guest's QMP socket.
        #[arg(long)]
        qmp: Option<PathBuf>,
        /// Its guest agent's socket (file systems frozen around each snapshot).
        #[arg(long, requires = "qmp")]
        guest_agent: Option<PathBuf>,
        /// The NBD server socket the guest already runs, if any (QEMU runs one server at most).
        #[arg(long, requires = "qmp")]
        nbd_socket: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ShareCommand {
    /// Declare a file share: the directory `{path}/{share}` of storage account `--account` at `--path`.
    Add {
        #[command(flatten)]
        at: Placement,
        #[arg(long)]
        account: String,
        /// The storage account's directory (created when missing).
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        share: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    dir: DataDirArg,
    /// What this node does: `all` serves the API and runs jobs and the scheduler; `api` only serves
    /// the API (jobs it queues run on `jobs` or `all` nodes sharing the store); `jobs` only runs
    /// jobs and the scheduler, and listens on nothing.
    #[arg(long, env = "RSVAULT_ROLE", default_value = "all", value_parser = ["all", "api", "jobs"])]
    role: String,
    /// Where vaults live: a TOML file (mode 0600) of object-storage targets, S3 or Azure Blob, and
    /// the default for new vaults (see the README). Without it, vaults live in the data dir.
    #[arg(long, env = "RSVAULT_STORAGE")]
    storage: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "RSVAULT_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Base URL clients use, when it differs from the listen address.
    #[arg(long)]
    public_url: Option<String>,
    /// Extra host names or addresses for the server certificate.
    #[arg(long = "tls-host")]
    tls_hosts: Vec<String>,
    /// Serve this certificate chain (PEM, leaf first) instead of one from the data dir's own CA: the
    /// certificate that names a load balancer in front of several nodes. Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM, mode 0600) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Accept only api-versions Azure has published.
    #[arg(long)]
    strict_api_versions: bool,
    /// Retry-After seconds on long-running operations.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Record every ARM request/response here (for `oav validate-traffic`).
    #[arg(long)]
    traffic_dir: Option<PathBuf>,
    /// Items per page in list answers.
    #[arg(long, default_value_t = 200)]
    page_size: usize,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Backups and restores that run at once in the whole server (the others wait in the queue).
    #[arg(long, default_value_t = 2)]
    max_jobs: usize,
    /// Backups and restores that run at once in one vault (on all nodes sharing the store).
    #[arg(long, default_value_t = 1)]
    vault_jobs: usize,
    /// Seconds a running job's lease lasts unless this node renews it; after that, any node sharing
    /// the store settles the job (a node that crashed or lost the store).
    #[arg(long, default_value_t = 30)]
    job_lease: u64,
    /// The server key that seals vault passwords (default: DATA_DIR/engine.key, made at the first
    /// start). Every node sharing a store must use the same key file (0600); a node whose key differs
    /// from the store's refuses to start.
    #[arg(long, env = "RSVAULT_SERVER_KEY")]
    server_key: Option<PathBuf>,
    /// This node's name among the nodes sharing the store (default: the one kept in DATA_DIR/node-id,
    /// made at the first start).
    #[arg(long, env = "RSVAULT_NODE_ID")]
    node_id: Option<String>,
    /// Run on a virtual clock that moves only when told (POST /rsvault/admin/clock/advance), for
    /// testing automation: schedules, retention, soft delete and job times follow it. It starts at the
    /// time a previous --test-clock run left, or now.
    #[arg(long)]
    test_clock: bool,
    /// Seconds between policy passes (scheduled backups, retention, soft-delete purge, vault GC).
    #[arg(long, default_value_t = 30)]
    policy_interval: u64,
    /// Open connections in all (more are closed right after accept).
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Open connections from one peer address.
    #[arg(long, default_value_t = 128)]
    max_connections_per_addr: usize,
    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, default_value_t = 120)]
    idle_timeout: u64,
    /// Seconds allowed for the TLS handshake and for a request's headers.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds allowed to receive a request body.
    #[arg(long, default_value_t = 30)]
    body_timeout: u64,
    /// MiB of request bodies held in memory at once (beyond it: 503 ServerBusy).
    #[arg(long, default_value_t = 64)]
    inflight_body_mib: usize,
    /// Token requests per client id per minute (burst of the same size); successful ones are not counted.
    #[arg(long, default_value_t = 10)]
    token_rate: u32,
    #[command(flatten)]
    grants: AllowPathArg,
}

#[derive(Subcommand)]
enum PrincipalCommand {
    /// Create a service principal; prints its credentials as JSON (the secret is shown only now).
    Create {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        name: String,
        /// A built-in role to assign (e.g. "Backup Reader").
        #[arg(long, requires = "scope")]
        role: Option<String>,
        /// Scope of the role (e.g. /subscriptions/{id}).
        #[arg(long, requires = "role")]
        scope: Option<String>,
    },
    /// List principals and their roles.
    List(DataDirArg),
    /// Delete a principal and its role assignments.
    Delete {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        client_id: String,
    },
    /// Give a principal a new secret.
    ResetSecret {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        client_id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new signing key; tokens signed by the old one stay valid until they expire.
    Rotate {
        #[command(flatten)]
        dir: DataDirArg,
        /// The server key file, when the server runs with one (as `serve --server-key`): the new
        /// key is sealed with it.
        #[arg(long, env = "RSVAULT_SERVER_KEY")]
        server_key: Option<PathBuf>,
    },
}

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

fn offline_control(dir: &DataDirArg) -> Result<Control> {
    let store = dir.data_dir()?.open_existing()?;
    let settings = Settings {
        page_size: 200,
        token_lifetime_secs: 3600,
        issuer_url: String::new(),
    };
    Ok(Control::new(store, clock(), settings)?)
}

/// The offline control plane of `vm add` / `share add`: the paths they name must pass the same
/// grants as the server's (`--allow-path`, the data dir never granted).
fn granted_control(at: &Placement) -> Result<Control> {
    let grants = at.grants.host_grants().excluding(&at.dir.data_dir);
    Ok(offline_control(&at.dir)?.with_host_grants(grants))
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RSVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per core) and keeps freed pages in
/// them: the job workers and the engine's pipeline threads left hundreds of MiB behind after a wave of
/// backups. Two arenas are plenty for a server whose allocations are large, short-lived buffers;
/// the job engine also returns free pages after each job (`rsvault_engine::release_free_memory`).
fn limit_malloc_arenas() {
    if std::env::var("RSVAULT_MEMORY_TUNING").is_ok_and(|v| v == "off") {
        return; // the benchmark's "before" column
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before the worker threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, so the connection cap (not the descriptor limit)
/// is what refuses connections; warns when even the hard limit is below what the cap needs.
fn raise_nofile_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    // Room for the store, the vault engine's files and the listener besides the connections.
    let need = max_connections as u64 + 256;
    let have: u64 = lim.rlim_cur;
    if have < need {
        tracing::warn!(
            nofile = have,
            max_connections,
            "the open-file limit is below --max-connections plus headroom; raise it (ulimit -n) or lower the cap"
        );
    } else {
        tracing::info!(nofile = have, "open-file limit");
    }
}

/// The operator's storage targets (`--storage FILE`), or the data dir alone.
fn load_storage(path: Option<&std::path::Path>) -> Result<rsvault_control::storage::StorageTargets> {
    let Some(path) = path else {
        return Ok(Default::default());
    };
    let t = rsvault_control::storage::StorageTargets::load(path)?;
    for s in t.targets() {
        tracing::info!(target_name = s.name(), settings = ?s.target(), "vault storage target");
    }
    Ok(t)
}

async fn serve(args: ServeArgs) -> Result<()> {
    init_logging(&args.log_format);
    let mut config = rsvault_api::Config::new(args.dir.data_dir.clone());
    config.store = args.dir.store_location()?;
    match &config.store {
        Some(location) => tracing::info!(store = %location, "metadata store"),
        None => tracing::info!(store = %args.dir.data_dir.join("meta.db").display(), "metadata store"),
    }
    config.listen = args.listen;
    config.public_url = args.public_url;
    config.strict_api_versions = args.strict_api_versions;
    config.retry_after_secs = args.retry_after;
    config.traffic_dir = args.traffic_dir;
    config.page_size = args.page_size.max(1);
    config.tls_hosts = args.tls_hosts;
    config.node_id = args.node_id;
    config.tls_files = args.tls_cert.zip(args.tls_key);
    config.server_key = args.server_key;
    config.jobs = rsvault_jobs::JobLimits {
        workers: args.max_jobs.max(1),
        per_vault: args.vault_jobs.max(1),
        lease_secs: args.job_lease.max(2),
    };
    // Signal handlers exist before anyone is told we are up, so an early SIGTERM is still graceful.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    config.policy_interval = std::time::Duration::from_secs(args.policy_interval.max(1));
    {
        use std::time::Duration;
        let l = &mut config.limits;
        l.max_connections = args.max_connections.max(1);
        l.max_connections_per_addr = args.max_connections_per_addr.max(1);
        l.idle_timeout = Duration::from_secs(args.idle_timeout.max(1));
        l.header_timeout = Duration::from_secs(args.header_timeout.max(1));
        l.body_timeout = Duration::from_secs(args.body_timeout.max(1));
        l.inflight_body_bytes = args.inflight_body_mib.max(1).saturating_mul(1024 * 1024);
        let per_client = args.token_rate.max(1);
        l.token_rate_per_client = rsvault_api::Rate {
            burst: per_client,
            per_minute: per_client,
        };
        l.token_rate_per_addr = rsvault_api::Rate {
            burst: per_client.saturating_mul(6),
            per_minute: per_client.saturating_mul(6),
        };
    }
    raise_nofile_limit(config.limits.max_connections);
    limit_malloc_arenas();
    config.host_grants = args.grants.host_grants();
    config.storage = {
        let path = args.storage.clone();
        tokio::task::spawn_blocking(move || load_storage(path.as_deref())).await??
    };
    if matches!(config.store, Some(rsvault_store::StoreLocation::Postgres(_)))
        && config.storage.choose(None).ok().flatten().is_none()
    {
        tracing::warn!(
            data_dir = %args.dir.data_dir.display(),
            "the store is PostgreSQL, which other nodes may share, but new vaults go to this node's data dir: other nodes reach them only where the same path is mounted, and only that filesystem's flock guards them; for several nodes, declare an object-storage target as the default in --storage"
        );
    }
    let clock: SharedClock = if args.test_clock {
        tracing::warn!("test clock on: time moves only through POST /rsvault/admin/clock/advance");
        Arc::new(TestClock::new(SystemClock.now().trunc_subsecs(0)))
    } else {
        clock()
    };
    let role = Role::parse(&args.role).context("--role")?;
    let interval = config.policy_interval;
    // The node's store and control plane; then its jobs (interrupted ones settled before the API
    // accepts anything); then the API.
    let opened = rsvault_api::open(config, clock, role.serves_api())
        .await
        .context("starting rsvault")?;
    let control = opened.control();
    let node = {
        let c = control.clone();
        tokio::task::spawn_blocking(move || Node::start(c, role, interval))
            .await?
            .context("starting rsvault's workers")?
    };
    let running = match role.serves_api() {
        true => Some(opened.serve().await.context("starting rsvault")?),
        false => None,
    };
    // The ready line (scripts wait for it). A reader that went away must not stop the server, so
    // errors writing to stdout are ignored.
    {
        let node_id = control.node_id().unwrap_or("-");
        let text = match &running {
            Some(running) => format!(
                "rsvault listening on {}\nbootstrap credentials: {}\nnode {} at {}\n",
                running.base_url,
                DataDir::new(&args.dir.data_dir).bootstrap_path().display(),
                node_id,
                running.local_addr
            ),
            None => format!("rsvault running jobs (role jobs: no listener)\nnode {node_id}\n"),
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
    }
    let signalled = async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    // Stop order: the API stops accepting (in-flight requests finish), then the node's workers
    // (scheduler, then jobs, which go back to the queue).
    match running {
        Some(running) => {
            let stopper = running.stopper();
            tokio::spawn(async move {
                signalled.await;
                let _ = stopper.send(true);
            });
            running.wait().await;
        }
        None => signalled.await,
    }
    tokio::task::spawn_blocking(move || node.stop()).await?;
    Ok(())
}

/// `rsvault nodes`: the nodes that reported into the store, when each was last seen, its workers,
/// and which node leads the scheduler.
fn nodes(dir: &DataDirArg, as_json: bool) -> Result<()> {
    let store = dir.data_dir()?.open_existing()?;
    let (nodes, leader) = store
        .read(|db| Ok::<_, anyhow::Error>((db.nodes()?, db.leader(rsvault_control::scheduler::SCHEDULER_LEASE)?)))?;
    let now = chrono::Utc::now();
    let ts = |t: chrono::DateTime<chrono::Utc>| rsvault_core::time::timestamp(t);
    let leader = leader.filter(|(_, until)| *until >= now);
    let list: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            let mut v = serde_json::json!({
                "node": n.node,
                "started": ts(n.started),
                "lastSeen": ts(n.seen),
                "secondsSinceSeen": (now - n.seen).num_seconds().max(0),
                "schedulerLeader": leader.as_ref().is_some_and(|(l, _)| *l == n.node),
            });
            if let (Some(o), Some(info)) = (v.as_object_mut(), n.info.as_object()) {
                for (k, x) in info {
                    o.entry(k.clone()).or_insert(x.clone());
                }
            }
            v
        })
        .collect();
    if as_json {
        return print_json(&serde_json::json!({
            "schedulerLeader": leader.as_ref().map(|(node, until)| serde_json::json!({"node": node, "until": ts(*until)})),
            "nodes": list,
        }));
    }
    match &leader {
        Some((node, until)) => println!("scheduler leader: {node} (lease until {})", ts(*until)),
        None => println!("scheduler leader: none"),
    }
    if list.is_empty() {
        println!("no node has reported into this store");
    }
    for n in &list {
        let s = |k: &str| n[k].as_str().map(str::to_string).unwrap_or_else(|| n[k].to_string());
        println!(
            "\nnode {}  role {}  version {}  started {}  last seen {} ({}s ago)  running jobs {}",
            s("node"),
            s("role"),
            s("version"),
            s("started"),
            s("lastSeen"),
            n["secondsSinceSeen"],
            n["runningJobs"].as_u64().unwrap_or(0),
        );
        let workers = n["workers"].as_array().cloned().unwrap_or_default();
        if workers.is_empty() {
            continue;
        }
        println!(
            "  {:<12} {:<8} {:<26} {:<5} {:<38} LAST ERROR",
            "WORKER", "STATE", "LAST RUN", "JOBS", "DETAIL"
        );
        for w in workers {
            let f = |k: &str| match &w[k] {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(x) => x.clone(),
                x => x.to_string(),
            };
            println!(
                "  {:<12} {:<8} {:<26} {:<5} {:<38} {}",
                f("name"),
                f("state"),
                f("lastRun"),
                f("jobsRunning"),
                f("detail"),
                match &w["lastError"] {
                    serde_json::Value::String(e) => format!("{} ({e})", f("lastErrorTime")),
                    _ => "-".into(),
                }
            );
        }
    }
    Ok(())
}

fn env(dir: &DataDirArg) -> Result<()> {
    let b = DataDir::new(&dir.data_dir).read_bootstrap()?;
    let rm = &b.resource_manager;
    println!(
        r#"# Python (azure-identity + azure-mgmt-*)
from azure.identity import ClientSecretCredential
from azure.mgmt.recoveryservices import RecoveryServicesClient
cred = ClientSecretCredential("{tenant}", "{client}", "<secret from {bootstrap}>",
                             authority="{rm}", disable_instance_discovery=True, connection_verify="{ca}")
vaults = RecoveryServicesClient(cred, "{sub}", base_url="{rm}", connection_verify="{ca}",
                                credential_scopes=["https://management.azure.com/.default"])

# az CLI
export REQUESTS_CA_BUNDLE="{ca}" AZURE_CORE_COLLECT_TELEMETRY=false
az cloud register -n rsvault --endpoint-resource-manager {rm} --endpoint-active-directory {rm} \
   --endpoint-active-directory-resource-id https://management.azure.com/
az cloud set -n rsvault
az config set core.instance_discovery=false
az login --service-principal -u {client} --password="<secret from {bootstrap}>" --tenant {tenant}"#,
        tenant = b.tenant_id,
        client = b.client_id,
        sub = b.subscription_id,
        ca = b.ca_file,
        bootstrap = DataDir::new(&dir.data_dir).bootstrap_path().display(),
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(serve(*args)),
        Command::Nodes { dir, json } => nodes(&dir, json),
        Command::Principal(PrincipalCommand::Create { dir, name, role, scope }) => {
            let c = offline_control(&dir)?;
            let role = role.as_deref().zip(scope.as_deref());
            print_json(&c.create_principal(&name, role)?)
        }
        Command::Principal(PrincipalCommand::List(dir)) => print_json(&offline_control(&dir)?.list_principals()?),
        Command::Principal(PrincipalCommand::Delete { dir, client_id }) => {
            offline_control(&dir)?.delete_principal(&client_id)?;
            Ok(())
        }
        Command::Principal(PrincipalCommand::ResetSecret { dir, client_id }) => {
            print_json(&offline_control(&dir)?.reset_secret(&client_id)?)
        }
        Command::Keys(KeysCommand::Rotate { dir, server_key }) => {
            let c = offline_control(&dir)?;
            let key_file = server_key.unwrap_or_else(|| dir.data_dir.join("engine.key"));
            let kid = rsvault_control::tokens::rotate_keys(c.store(), &key_file, c.now())?;
            print_json(&serde_json::json!({ "kid": kid }))
        }
        Command::Env(dir) => env(&dir),
        Command::ResticEnv {
            dir,
            vault,
            storage,
            server_key,
        } => {
            let dp = rsvault_control::dataplane::DataPlane::open(&dir.data_dir, Default::default())?
                .with_storage(load_storage(storage.as_deref())?)
                .with_server_key(server_key.as_deref())?;
            let (repo, password) = offline_control(&dir)?.with_data_plane(dp).restic_env(&vault)?;
            // Shell-quoted: the password is base64url, the path the data dir's, the rest the
            // operator's storage file's.
            for (k, v) in repo.restic_env() {
                println!("{k}='{}'", v.replace('\'', "'\\''"));
            }
            println!("RESTIC_PASSWORD='{}'", password.expose());
            Ok(())
        }
        // Disk probes run their own small runtime: this thread has none.
        Command::Vm(VmCommand::Add {
            at,
            name,
            disks,
            qmp,
            guest_agent,
            nbd_socket,
        }) => {
            let c = granted_control(&at)?;
            let sub = at.subscription.map_or_else(|| c.default_subscription(), Ok)?;
            match qmp {
                Some(qmp_socket) => {
                    let src = rsvault_control::livevm::LiveVmSource {
                        qmp_socket,
                        agent_socket: guest_agent,
                        nbd_socket,
                    };
                    print_json(&c.declare_live_vm(&sub, &at.group, &name, &at.location, &src)?)
                }
                None => print_json(&c.declare_vm(&sub, &at.group, &name, &at.location, &disks)?),
            }
        }
        Command::Share(ShareCommand::Add {
            at,
            account,
            path,
            share,
        }) => {
            let c = granted_control(&at)?;
            let sub = at.subscription.map_or_else(|| c.default_subscription(), Ok)?;
            print_json(&c.declare_share(&sub, &at.group, &account, &path, &share, &at.location)?)
        }
    }
}
