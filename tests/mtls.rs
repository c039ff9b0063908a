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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_subjects_map_to_roles() {
    let pki = Pki::new();
    let temp = tempfile::tempdir().expect("temp");
    let (server_cert, server_key) = pki.issue("anchor-pdp");
    let write = |name: &str, pem: &str| {
        let path = temp.path().join(name);
        std::fs::write(&path, pem).expect("write pem");
        path
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut args = serve_defaults();
    args.listen = addr;
    args.data_dir = temp.path().join("data");
    args.policies = repo_policies();
    args.tls_cert = Some(write("server.pem", &server_cert));
    args.tls_key = Some(write("server.key", &server_key));
    args.client_ca = Some(write("ca.pem", &pki.ca_pem));
    args.mtls_roles = vec!["edge-1:gateway".into(), "ops-1:admin".into()];
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
                console: None,
            },
            pdp,
            &args,
            async {
                let _ = stopped.await;
            },
        )
        .await
    });

    let mut ops = PolicyDecisionPointClient::new(
        channel(addr, &pki, Some("ops-1"))
            .await
            .expect("ops connects"),
    );
    ops.register(proto::RegisterRequest {
        record: Some(Record::Merchant(proto::Merchant {
            id: "m1".into(),
            tier: 1,
            display_name: String::new(),
        })),
        expected_revision: None,
    })
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
    let refused = gateway
        .register(proto::RegisterRequest {
            record: Some(Record::Merchant(proto::Merchant {
                id: "m2".into(),
                tier: 1,
                display_name: String::new(),
            })),
            expected_revision: None,
        })
        .await;
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

    let _ = stop.send(());
    serving.await.expect("server task").expect("server");
}
