//! Command line and environment. Every setting has an embedded default, so `anchor-pdp serve`
//! runs with no arguments and no config file; a flag beats its environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "anchor-pdp",
    version,
    about = "Policy decision point for virtual-anchor livestreams"
)]
pub struct Cli {
    /// Log lines as `text` (for people) or `json` (one object per line, for log shippers).
    #[arg(long, global = true, env = "ANCHOR_PDP_LOG_FORMAT", value_enum,
          default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `HOST:PORT`, where HOST may be a name (`localhost`) as well as an address; a name that
/// resolves to several addresses takes the first IPv4 one.
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .map_err(|e| format!("{value}: {e} (give HOST:PORT, e.g. 127.0.0.1:50051)"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{value}: resolves to no address"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (PolicyDecisionPoint, PolicyAdmin, health, reflection).
    Serve(Box<ServeArgs>),
    /// Check or test a policy directory with the server's own loader and decision code.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Caller tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Write a consistent backup of a running server's store to a file (an admin call; the
    /// server goes on serving).
    Backup(BackupArgs),
    /// Restore a backup into an empty store: sled in `--data-dir`, or `--store etcd` with its
    /// endpoints and prefix (the same flags as `serve`). Stop the servers of that store first.
    Restore(Box<RestoreArgs>),
    /// The settings `serve` would run with.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting of `serve` given these flags (and --config, and the environment),
    /// as a config file, each with where it came from (flag, env, file, default); secrets
    /// redacted.
    Show(Box<ServeArgs>),
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The file to write (whole or not at all).
    #[arg(long)]
    pub to: PathBuf,
    /// The server to back up.
    #[arg(
        long,
        env = "ANCHOR_PDP_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// An admin's token, if the server authenticates callers.
    #[arg(long, env = "ANCHOR_PDP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Also carry every decision-log record the server holds.
    #[arg(long, default_value_t = false)]
    pub with_decision_log: bool,
    /// The CA (PEM) that signed the server's certificate, for an `https://` --server (the
    /// system's roots are not consulted).
    #[arg(long, env = "ANCHOR_PDP_CA")]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) to present, for a server that requires one (--mtls-role).
    #[arg(long, env = "ANCHOR_PDP_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, env = "ANCHOR_PDP_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup file (`anchor-pdp backup --to`); checked whole before anything is written.
    #[arg(long)]
    pub from: PathBuf,
    /// The store to restore into, chosen as `serve` chooses it.
    #[command(flatten)]
    pub target: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Read a token from standard input and print the `sha256:...` form `--token` takes.
    Hash,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate the schema, the policies and every rule's annotations. Exit 0 when valid;
    /// otherwise print `file:line:col: reason` for every problem and exit 1.
    Validate {
        /// The policy directory.
        #[arg(default_value = "./policies")]
        dir: PathBuf,
    },
    /// Run the policy test suites in DIR/tests/*.yaml. Prints a line per case and
    /// `N passed, M failed`; exit 1 on any failure.
    Test {
        /// The policy directory.
        #[arg(default_value = "./policies")]
        dir: PathBuf,
        /// Also write JUnit XML here.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Write the built-in policy set (schema, rules and test suites) into DIR, for editing;
    /// then serve it with `--policies DIR`. Never overwrites a file.
    Export {
        /// Where to write it (created if missing).
        dir: PathBuf,
        /// Also write the files of this rule pack (repeatable): `labels` adds L1, L2 and C1
        /// (AI-content labels and likeness consent). Packs are off unless exported or named
        /// in the directory's packs.toml.
        #[arg(long = "with", value_name = "PACK", value_parser = parse_pack)]
        with: Vec<&'static crate::policy::packs::Pack>,
    },
}

fn parse_pack(name: &str) -> Result<&'static crate::policy::packs::Pack, String> {
    crate::policy::packs::find(name)
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A TOML file of settings, each key a long flag of `serve` (`listen = "0.0.0.0:50051"`,
    /// `token = ["..."]`). A flag beats the environment, which beats the file, which beats
    /// the default; `anchor-pdp config show` prints what is in force and where it came from.
    #[arg(long, env = "ANCHOR_PDP_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on for gRPC.
    #[arg(long, env = "ANCHOR_PDP_LISTEN", default_value = "127.0.0.1:50051",
          value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Directory of the sled store (created if missing).
    #[arg(long, env = "ANCHOR_PDP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Directory of the Cedar schema and policies. When it is the default and there is no
    /// such directory, the set built into the binary serves (`policy export` writes it out).
    #[arg(long, env = "ANCHOR_PDP_POLICIES", default_value = crate::policy::builtin::DEFAULT_DIR)]
    pub policies: PathBuf,

    /// Seconds a gateway should wait before re-checking a live session.
    #[arg(long, env = "ANCHOR_PDP_RECHECK_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub recheck_secs: u64,

    /// Address of the HTTP listener for gateway hooks (nginx-rtmp, SRS). Off unless set.
    #[arg(long, env = "ANCHOR_PDP_HTTP_LISTEN", value_parser = parse_listen)]
    pub http_listen: Option<SocketAddr>,

    /// nginx-rtmp control endpoints to cut streams at once when their session is shut down:
    /// GATEWAY=http://host:port/control (repeat, or comma-separate in the environment).
    #[arg(long, env = "ANCHOR_PDP_NGINX_CONTROL", value_delimiter = ',')]
    pub nginx_control: Vec<String>,

    /// A caller's token, as NAME:ROLE:sha256:HEX (ROLE: gateway, registrar, reviewer,
    /// inspector or admin; the hash from `anchor-pdp token hash`). Repeat, or comma-separate
    /// in the environment. With none, every caller is an admin and only loopback is allowed.
    #[arg(long = "token", env = "ANCHOR_PDP_TOKENS", value_delimiter = ',')]
    pub tokens: Vec<String>,

    /// A gateway's hook secret, as GATEWAY:sha256:HEX (the hash from `anchor-pdp token hash`);
    /// its hook URLs then carry `?pdp_secret=SECRET`. Repeat, or comma-separate in the
    /// environment. With none, the hook listener is allowed on loopback only.
    #[arg(
        long = "hook-secret",
        env = "ANCHOR_PDP_HOOK_SECRETS",
        value_delimiter = ','
    )]
    pub hook_secrets: Vec<String>,

    /// An OvenMediaEngine gateway's AdmissionWebhooks secret, as GATEWAY=SECRET (its
    /// `<SecretKey>`; at least 16 bytes): admissions must carry a matching X-OME-Signature.
    /// The secret itself, since an HMAC needs it: prefer the environment or a file readable by
    /// the service only. Repeat, or comma-separate in the environment.
    #[arg(
        long = "ome-secret",
        env = "ANCHOR_PDP_OME_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub ome_secrets: Vec<String>,

    /// Refuse viewers on the ingest servers that ask for them too (MediaMTX `read` and
    /// `playback`, OvenMediaEngine `outgoing`); by default they are admitted (the rules govern
    /// broadcasting, not watching).
    #[arg(long, env = "ANCHOR_PDP_DENY_PLAYBACK")]
    pub deny_playback: bool,

    /// Seconds an OvenMediaEngine publish is admitted for (its `lifetime`): OME then ends the
    /// connection and the publisher's reconnect is decided afresh (a new START). Off unless
    /// set: OME asks again only at the next connection.
    #[arg(long, env = "ANCHOR_PDP_OME_LIFETIME_SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub ome_lifetime_secs: Option<u64>,

    /// What to log: a level (`info`, `debug`) or per-module directives
    /// (`anchor_pdp=debug,info`); RUST_LOG, when set, wins. Default `info`. A SIGHUP applies a
    /// new value from the config file.
    #[arg(long, env = "ANCHOR_PDP_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Send traces over OTLP/gRPC to this collector (`http://127.0.0.1:4317`); off unless set.
    /// Every gRPC call is a span `rpc` with its method and, for Authorize, its decision id.
    #[arg(long, env = "ANCHOR_PDP_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Serve Prometheus metrics at http://ADDR/metrics (off unless set).
    #[arg(long, env = "ANCHOR_PDP_METRICS_LISTEN", value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,

    /// Let file-watch and SIGHUP reloads drop rules the active set enforces (otherwise such a
    /// set is rejected, naming the missing rules).
    #[arg(long, env = "ANCHOR_PDP_ALLOW_RULE_REMOVAL", default_value_t = false)]
    pub allow_rule_removal: bool,

    /// Serve gRPC (and the console, if on) over TLS with this certificate chain (PEM); needs
    /// --tls-key.
    #[arg(long, env = "ANCHOR_PDP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "ANCHOR_PDP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require gRPC client certificates issued by this CA (PEM): mutual TLS. The console
    /// verifies them but does not require them (a browser may sign in with a token instead).
    /// Needs --tls-cert.
    #[arg(long, env = "ANCHOR_PDP_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    /// A client certificate's subject common name and its role, as CN:ROLE (repeat, or
    /// comma-separate in the environment). Needs --client-ca.
    #[arg(
        long = "mtls-role",
        env = "ANCHOR_PDP_MTLS_ROLES",
        value_delimiter = ',',
        requires = "client_ca"
    )]
    pub mtls_roles: Vec<String>,

    /// Decision-log records that may wait to be written.
    #[arg(long, env = "ANCHOR_PDP_DECISION_LOG_QUEUE", default_value_t = 4096)]
    pub decision_log_queue: usize,

    /// When the decision-log queue is full: `wait` (callers wait; nothing is lost) or `drop`
    /// (callers go on; drops are counted in GetDecisionLogStatus).
    #[arg(
        long,
        env = "ANCHOR_PDP_DECISION_LOG_OVERFLOW",
        value_enum,
        default_value = "wait"
    )]
    pub decision_log_overflow: crate::decision_log::Overflow,

    /// Decision-log records older than this many days are deleted.
    #[arg(
        long,
        env = "ANCHOR_PDP_DECISION_LOG_MAX_AGE_DAYS",
        default_value_t = 180
    )]
    pub decision_log_max_age_days: u32,

    /// At most this many decision-log records are kept (the oldest go first).
    #[arg(
        long,
        env = "ANCHOR_PDP_DECISION_LOG_MAX_RECORDS",
        default_value_t = 10_000_000
    )]
    pub decision_log_max_records: usize,

    /// The decision log is kept in segment files of about this many MiB; retention deletes
    /// whole segments.
    #[arg(
        long,
        env = "ANCHOR_PDP_DECISION_LOG_SEGMENT_MIB",
        default_value_t = 64,
        value_parser = clap::value_parser!(u64).range(1..=1024)
    )]
    pub decision_log_segment_mib: u64,

    /// Writes are refused (RESOURCE_EXHAUSTED, health NOT_SERVING) while the data
    /// directory's filesystem has less than this many MiB free, so the store never meets a
    /// full disk; they resume by themselves once space is freed.
    #[arg(long, env = "ANCHOR_PDP_DISK_RESERVE_MIB", default_value_t = 256)]
    pub disk_reserve_mib: u64,

    /// MiB preallocated in the data directory (`ballast`) and released when the reserve is
    /// reached, so writes already under way can finish. 0: none.
    #[arg(long, env = "ANCHOR_PDP_DISK_BALLAST_MIB", default_value_t = 64)]
    pub disk_ballast_mib: u64,

    /// Serve the browser console for reviewers, inspectors and admins on this address (off
    /// when unset): HTTPS with --tls-cert, else plain HTTP. Loopback only unless caller
    /// authentication (tokens or --mtls-role) is configured.
    #[arg(long, env = "ANCHOR_PDP_CONSOLE_LISTEN", value_parser = parse_listen)]
    pub console_listen: Option<SocketAddr>,

    /// `FROM=TO`: an anchor image reference starting with FROM is fetched by the server from
    /// the http(s) URL TO + the rest (TO ends in `/`; e.g.
    /// `oss://anchors/=https://cdn.example.com/anchors/`). Repeatable. With any prefix, the
    /// console shows images through itself, approvals of anchors bind to their image's SHA-256,
    /// and approved images are re-checked (--image-recheck-secs).
    #[arg(
        long = "console-image-prefix",
        env = "ANCHOR_PDP_CONSOLE_IMAGE_PREFIXES",
        value_delimiter = ','
    )]
    pub console_image_prefixes: Vec<String>,

    /// Seconds between re-checks of approved anchors' images: one serving other bytes than the
    /// approved ones goes back to review.
    #[arg(long, env = "ANCHOR_PDP_IMAGE_RECHECK_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub image_recheck_secs: u64,

    /// Where the state lives: `sled` (embedded, in --data-dir) or `etcd` (shared by several
    /// replicas; --data-dir then holds this replica's own decision log).
    #[arg(long = "store", env = "ANCHOR_PDP_STORE", value_enum, default_value_t = StoreKind::Sled)]
    pub store: StoreKind,

    /// etcd client endpoints (`http://host:2379`, or `https://` with --etcd-ca).
    #[arg(
        long,
        env = "ANCHOR_PDP_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required_if_eq("store", "etcd")
    )]
    pub etcd_endpoints: Vec<String>,

    /// Every key anchor-pdp writes in etcd starts with this.
    #[arg(long, env = "ANCHOR_PDP_ETCD_PREFIX", default_value = "/anchor-pdp/")]
    pub etcd_prefix: String,

    /// etcd user (with --etcd-password) when etcd has authentication enabled.
    #[arg(long, env = "ANCHOR_PDP_ETCD_USER", requires = "etcd_password")]
    pub etcd_user: Option<String>,

    #[arg(long, env = "ANCHOR_PDP_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,

    /// CA certificate (PEM) that signed etcd's server certificates.
    #[arg(long, env = "ANCHOR_PDP_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,

    /// Client certificate and key (PEM) when etcd asks for them.
    #[arg(long, env = "ANCHOR_PDP_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,

    #[arg(long, env = "ANCHOR_PDP_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,

    /// Without an etcd quorum, LIVE re-checks of unchanged facts are answered from the view
    /// for this long after the last quorum read, then fail closed. New broadcasts and writes
    /// are refused at once.
    #[arg(long, env = "ANCHOR_PDP_ETCD_MAX_STALENESS_MS", default_value_t = 5000)]
    pub etcd_max_staleness_ms: u64,

    /// How long state-change decision records stay in etcd for every replica to copy (a
    /// replica down for longer misses them in its own log; the others have them).
    #[arg(long, env = "ANCHOR_PDP_ETCD_LOG_RETENTION_MINS", default_value_t = 60)]
    pub etcd_log_retention_mins: u64,

    /// How long closed sessions and enforcement events stay in etcd (every replica's decision
    /// log keeps their records for --decision-log-max-age-days).
    #[arg(long, env = "ANCHOR_PDP_ETCD_HISTORY_MINS", default_value_t = 360)]
    pub etcd_history_mins: u64,

    /// etcd revisions older than this are compacted (a replica whose watch falls further
    /// behind reloads its view from a snapshot).
    #[arg(long, env = "ANCHOR_PDP_ETCD_COMPACT_SECS", default_value_t = 300)]
    pub etcd_compact_secs: u64,

    /// This replica's name, in enforcement events and logs; defaults to host:port.
    #[arg(long, env = "ANCHOR_PDP_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Reload the policies when a file under the policy directory changes (SIGHUP and the
    /// ReloadPolicies RPC always work).
    #[arg(long, env = "ANCHOR_PDP_WATCH_POLICIES", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub watch_policies: bool,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "ANCHOR_PDP_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    pub max_message_bytes: u64,

    /// Seconds a new gRPC connection has to start its handshake (the HTTP/2 preface, or the
    /// TLS handshake); a socket that says nothing is closed.
    #[arg(long, env = "ANCHOR_PDP_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub handshake_timeout_secs: u64,

    /// Seconds between HTTP/2 keepalive pings on an idle gRPC connection.
    #[arg(long, env = "ANCHOR_PDP_KEEPALIVE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keepalive_secs: u64,

    /// Seconds a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = "ANCHOR_PDP_KEEPALIVE_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub keepalive_timeout_secs: u64,

    /// gRPC connections open at once; more are closed as they arrive.
    #[arg(long, env = "ANCHOR_PDP_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Server streams (WatchEnforcements, ReadDecisionLog) open at once across all
    /// connections; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "ANCHOR_PDP_MAX_STREAMS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_streams: u64,

    /// Seconds a hook connection has to send its request headers.
    #[arg(long, env = "ANCHOR_PDP_HOOK_HEADER_TIMEOUT_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub hook_header_timeout_secs: u64,

    /// Seconds a hook connection may take in all (request, decision, answer).
    #[arg(long, env = "ANCHOR_PDP_HOOK_REQUEST_TIMEOUT_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub hook_request_timeout_secs: u64,

    /// Hook connections open at once; more are closed as they arrive.
    #[arg(long, env = "ANCHOR_PDP_MAX_HOOK_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_hook_connections: u64,
}

impl ServeArgs {
    pub fn grpc_limits(&self) -> crate::net::GrpcLimits {
        crate::net::GrpcLimits {
            handshake_timeout: std::time::Duration::from_secs(self.handshake_timeout_secs),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            tls: self.tls_cert.is_some(),
        }
    }

    pub fn hook_limits(&self) -> crate::net::HookLimits {
        crate::net::HookLimits {
            header_timeout: std::time::Duration::from_secs(self.hook_header_timeout_secs),
            request_timeout: std::time::Duration::from_secs(self.hook_request_timeout_secs),
            max_connections: usize::try_from(self.max_hook_connections).unwrap_or(usize::MAX),
        }
    }
}

/// Where the state lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Sled,
    Etcd,
}

impl ServeArgs {
    /// The etcd backend's options, from the flags.
    pub fn disk_options(&self) -> crate::store::DiskOptions {
        crate::store::DiskOptions {
            reserve_bytes: self.disk_reserve_mib << 20,
            ballast_bytes: self.disk_ballast_mib << 20,
        }
    }

    pub fn etcd_options(&self) -> crate::store::EtcdOptions {
        let replica = self.replica_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "replica".into());
            format!("{host}:{}", self.listen.port())
        });
        crate::store::EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            user: self.etcd_user.clone().zip(self.etcd_password.clone()),
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            max_staleness: std::time::Duration::from_millis(self.etcd_max_staleness_ms),
            log_retention: std::time::Duration::from_secs(self.etcd_log_retention_mins * 60),
            compact_after: std::time::Duration::from_secs(self.etcd_compact_secs),
            replica,
        }
    }
}
