//! Mutual TLS: a client certificate's subject maps to a role; unknown subjects and clients
//! without a certificate are refused.

mod common;

use std::sync::Arc;

use anchor_pdp::clock::ManualClock;
use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyDecisionPointClient, server};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "anchor-pdp test CA");
        let ca = params.self_signed(&key).expect("ca");
        Pki {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `common_name`, valid for localhost.
    fn issue(&self, common_name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

fn merchant(id: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::Merchant(proto::Merchant {
            id: id.into(),
            tier: 1,
            display_name: String::new(),
        })),
        expected_revision: None,
    }
}

async fn channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    client: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if let Some(cn) = client {
        let (cert, key) = pki.issue(cn);
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await
}

/// A server with TLS from `pki`, client certificates required on gRPC, these `CN:ROLE`
/// subjects, and the console on when asked.
struct TlsServer {
    addr: std::net::SocketAddr,
    console_addr: Option<std::net::SocketAddr>,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), server::StartError>>,
    _temp: tempfile::TempDir,
}

impl TlsServer {
    async fn start(pki: &Pki, subjects: &[&str], console: bool) -> TlsServer {
        let temp = tempfile::tempdir().expect("temp");
        let (server_cert, server_key) = pki.issue("anchor-pdp");
        let write = |name: &str, pem: &str| {
            let path = temp.path().join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let console = match console {
            true => Some(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind console"),
            ),
            false => None,
        };
        let console_addr = console
            .as_ref()
            .map(|l| l.local_addr().expect("console addr"));
        let mut args = serve_defaults();
        args.listen = addr;
        args.data_dir = temp.path().join("data");
        args.policies = repo_policies();
        args.tls_cert = Some(write("server.pem", &server_cert));
        args.tls_key = Some(write("server.key", &server_key));
        args.client_ca = Some(write("ca.pem", &pki.ca_pem));
        args.mtls_roles = subjects.iter().map(|s| s.to_string()).collect();
        args.console_listen = console_addr;
        let pdp = server::open(&args, Arc::new(ManualClock::new(T0)))
            .await
            .expect("open");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            server::serve(
                server::Listeners {
                    grpc: listener,
                    http: None,
                    metrics: None,
                    console,
                },
                pdp,
                &args,
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        TlsServer {
            addr,
            console_addr,
            stop,
            serving,
            _temp: temp,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.serving.await.expect("server task").expect("server");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_subjects_map_to_roles() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki, &["edge-1:gateway", "ops-1:admin"], false).await;
    let addr = server.addr;

    let mut ops = PolicyDecisionPointClient::new(
        channel(addr, &pki, Some("ops-1"))
            .await
            .expect("ops connects"),
    );
    ops.register(merchant("m1"))
        .await
        .expect("the admin certificate may register merchants");

    let mut gateway = PolicyDecisionPointClient::new(
        channel(addr, &pki, Some("edge-1"))
            .await
            .expect("gateway connects"),
    );
    let decided = gateway
        .authorize(start())
        .await
        .expect("the gateway certificate may authorize")
        .into_inner();
    assert_eq!(
        decision(&decided),
        proto::Decision::Deny,
        "nothing filed but the merchant"
    );
    let refused = gateway.register(merchant("m2")).await;
    assert_eq!(
        refused.map(|_| ()).unwrap_err().code(),
        Code::PermissionDenied
    );

    // A valid certificate whose subject has no role.
    let mut stranger = PolicyDecisionPointClient::new(
        channel(addr, &pki, Some("stranger"))
            .await
            .expect("stranger connects"),
    );
    let refused = stranger.authorize(start()).await.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("stranger"),
        "{}",
        refused.message()
    );

    // No certificate at all: the handshake itself fails (or the first call does).
    match channel(addr, &pki, None).await {
        Err(_) => {}
        Ok(channel) => {
            let mut anonymous = PolicyDecisionPointClient::new(channel);
            assert!(anonymous.authorize(start()).await.is_err());
        }
    }

    server.stop().await;
}

/// One HTTP/1.1 exchange with the console over TLS, with a certificate `issuer` gave
/// `subject`, or with none; an error is the connection's (a refused handshake).
fn https(
    addr: std::net::SocketAddr,
    server_ca: &Pki,
    client: Option<(&Pki, &str)>,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &str,
) -> std::io::Result<common::console::Reply> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.ca_pem.as_bytes()).expect("ca pem"))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((issuer, subject)) => {
            let (cert, key) = issuer.issue(subject);
            builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert pem")],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key pem"),
                )
                .expect("client auth")
        }
    };
    let name = ServerName::try_from("localhost").expect("name");
    let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let stream = rustls::StreamOwned::new(connection, std::net::TcpStream::connect(addr)?);
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    tokio::task::block_in_place(|| common::console::exchange(stream, method, path, &headers, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_tls_and_signs_in_a_certificate_whose_subject_has_a_console_role() {
    let pki = Pki::new();
    let server = TlsServer::start(
        &pki,
        &["edge-1:gateway", "ops-1:admin", "rev-1:reviewer"],
        true,
    )
    .await;
    let (addr, console_addr) = (server.addr, server.console_addr.expect("console"));
    let mut ops = PolicyDecisionPointClient::new(
        channel(addr, &pki, Some("ops-1"))
            .await
            .expect("ops connects"),
    );
    for record in [
        Record::Merchant(proto::Merchant {
            id: "m1".into(),
            tier: 1,
            display_name: String::new(),
        }),
        Record::Provider(proto::ServiceProvider {
            id: "p1".into(),
            display_name: String::new(),
        }),
        Record::Anchor(proto::VirtualAnchor {
            id: "a1".into(),
            owner_merchant_id: "m1".into(),
            provider_id: "p1".into(),
            image_style: proto::ImageStyle::RealisticHuman as i32,
            image_reference: "oss://anchors/a1.png".into(),
            display_name: String::new(),
            likeness_of: String::new(),
            consent_id: String::new(),
        }),
    ] {
        ops.register(proto::RegisterRequest {
            request_id: String::new(),
            record: Some(record),
            expected_revision: None,
        })
        .await
        .expect("register");
    }

    // As `subject`, with a certificate of the deployment's CA, or with none.
    let console =
        |subject: Option<&str>, method: &str, path: &str, cookie: Option<&str>, body: &str| {
            https(
                console_addr,
                &pki,
                subject.map(|s| (&pki, s)),
                method,
                path,
                cookie,
                body,
            )
            .expect("an HTTPS reply")
        };

    // A reviewer's certificate: the sign-in page offers it, and one click signs in, with a
    // cookie that says Secure now that the console speaks TLS.
    let page = console(Some("rev-1"), "GET", "/sign-in", None, "");
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("Your client certificate names you as <code>rev-1</code> (reviewer)"),
        "{}",
        page.body
    );
    let signed_in = console(Some("rev-1"), "POST", "/sign-in", None, "with=certificate");
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.header("location"), Some("/review"));
    let set_cookie = signed_in.header("set-cookie").expect("a session cookie");
    for part in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(set_cookie.contains(part), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().expect("cookie").to_owned();
    let filing = console(Some("rev-1"), "GET", "/review/anchor/a1", Some(&cookie), "");
    assert_eq!(filing.status, 200, "{}", filing.body);
    // Over TLS every answer asks browsers to stay on HTTPS, and every cookie says Secure.
    for reply in [&page, &signed_in, &filing] {
        assert_eq!(
            reply.header("strict-transport-security"),
            Some("max-age=31536000"),
            "{:?}",
            reply.headers
        );
    }
    let lang = console(Some("rev-1"), "GET", "/lang/zh", Some(&cookie), "");
    let lang_cookie = lang.header("set-cookie").expect("the language cookie");
    assert!(lang_cookie.contains("; Secure"), "{lang_cookie}");
    let csrf = common::console::csrf_of(&filing.body);
    // The verdict goes through the same service and lands in the log under the subject.
    let verdict = console(
        Some("rev-1"),
        "POST",
        "/review/anchor/a1",
        Some(&cookie),
        &format!("verdict=approve&expected_revision=1&note=ok&csrf={csrf}"),
    );
    assert_eq!(verdict.status, 303, "{}", verdict.body);
    let filing = console(None, "GET", "/review/anchor/a1", Some(&cookie), "");
    assert!(
        filing.body
            .contains("<td>ReviewFiling · console</td><td>rev-1 (reviewer, console)</td><td>Revision 2 · approved</td>"),
        "{}",
        filing.body
    );

    // A gateway's certificate is named but refused; a certificate without a role, and a
    // browser without one, get no offer and cannot sign in by certificate.
    let gateway = console(Some("edge-1"), "GET", "/sign-in", None, "");
    assert!(
        gateway
            .body
            .contains("may not use the console: <code>edge-1</code> (gateway)"),
        "{}",
        gateway.body
    );
    for subject in [Some("edge-1"), Some("stranger"), None] {
        let refused = console(subject, "POST", "/sign-in", None, "with=certificate");
        assert_eq!(refused.status, 303, "{subject:?}");
        assert_eq!(
            refused.header("location"),
            Some("/sign-in?failed=true"),
            "{subject:?}"
        );
        assert!(refused.header("set-cookie").is_none(), "{subject:?}");
    }
    let stranger = console(Some("stranger"), "GET", "/sign-in", None, "");
    assert!(
        stranger
            .body
            .contains("has no role here: <code>stranger</code>"),
        "{}",
        stranger.body
    );

    // A certificate from another CA fails the handshake; plain HTTP gets no page.
    let other = Pki::new();
    let foreign = https(
        console_addr,
        &pki,
        Some((&other, "rev-1")),
        "GET",
        "/sign-in",
        None,
        "",
    );
    assert!(foreign.is_err(), "{:?}", foreign.map(|r| r.status));
    let plain = tokio::task::block_in_place(|| {
        let stream = std::net::TcpStream::connect(console_addr).expect("connect");
        common::console::exchange(stream, "GET", "/sign-in", &[], "")
    });
    assert!(plain.is_err(), "{:?}", plain.map(|r| r.status));

    server.stop().await;
}

/// `anchor-pdp backup` against a server that requires client certificates: with the CA and an
/// admin's certificate it writes the backup; without a certificate, or with a gateway's, it
/// fails and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_tool_speaks_mutual_tls() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki, &["edge-1:gateway", "ops-1:admin"], false).await;
    let mut ops = PolicyDecisionPointClient::new(
        channel(server.addr, &pki, Some("ops-1"))
            .await
            .expect("ops connects"),
    );
    ops.register(merchant("m1")).await.expect("register");
    let temp = tempfile::tempdir().expect("temp");
    let write = |name: &str, pem: &str| {
        let path = temp.path().join(name);
        std::fs::write(&path, pem).expect("write pem");
        path.display().to_string()
    };
    let ca = write("ca.pem", &pki.ca_pem);
    let (ops_cert, ops_key) = pki.issue("ops-1");
    let (edge_cert, edge_key) = pki.issue("edge-1");
    let ops = (write("ops.pem", &ops_cert), write("ops.key", &ops_key));
    let edge = (write("edge.pem", &edge_cert), write("edge.key", &edge_key));
    let server_url = format!("https://localhost:{}", server.addr.port());
    // Run off the async workers: the server answers on them meanwhile.
    let backup = |to: &str, extra: &[&str]| {
        let to = temp.path().join(to);
        let (server_url, ca, extra) = (server_url.clone(), ca.clone(), extra.join(" "));
        let run = {
            let to = to.clone();
            move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_anchor-pdp"))
                    .args(["backup", "--server", &server_url, "--ca", &ca])
                    .arg("--to")
                    .arg(&to)
                    .args(extra.split_whitespace())
                    .env_remove("ANCHOR_PDP_TOKEN")
                    .output()
                    .expect("run backup")
            }
        };
        async move {
            let output = tokio::task::spawn_blocking(run).await.expect("join");
            let said = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            (output.status.success(), said, to)
        }
    };
    let (ok, said, to) = backup("ops.backup", &["--cert", &ops.0, "--key", &ops.1]).await;
    assert!(ok, "{said}");
    let bytes = std::fs::read(&to).expect("backup written");
    let decoded = anchor_pdp::store::Backup::decode(&bytes).expect("a whole backup");
    assert_eq!(decoded.header.backend, "sled", "{said}");
    assert!(decoded.header.keys >= 1, "{said}");

    let (ok, said, to) = backup("edge.backup", &["--cert", &edge.0, "--key", &edge.1]).await;
    assert!(!ok && said.contains("backup refused"), "{said}");
    assert!(!to.exists(), "nothing written for a refused backup");

    let (ok, said, to) = backup("anonymous.backup", &[]).await;
    assert!(!ok, "{said}");
    assert!(!to.exists(), "nothing written without a certificate");
    server.stop().await;
}
