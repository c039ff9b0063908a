//! A server with the console on and callers of every console role, filed with m1, p1 (listed),
//! a pending anchor a1 with a hostile display name, and approved d1 and r1.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};

use anchor_pdp::api::auth::hash_token;
use anchor_pdp::proto::{self, register_request::Record};

use super::{Options, TestServer};

pub fn token(role: &str) -> String {
    format!("console-token-for-{role}-0123456789")
}

pub async fn console_server() -> (TestServer, super::bearer::Pdp, super::bearer::Admin) {
    console_server_with(|args| {
        args.console_image_prefixes = vec![super::images::image_host().prefix()];
    })
    .await
}

/// The console on, with a caller token for each of `reviewer`, `inspector`, `gateway` and
/// `admin` (see `token`).
pub fn options() -> Options {
    Options {
        console: true,
        tokens: ["reviewer", "inspector", "gateway", "admin"]
            .iter()
            .map(|role| format!("{role}-1:{role}:{}", hash_token(&token(role))))
            .collect(),
        ..Options::default()
    }
}

/// `console_server`, with `configure` applied to its settings.
pub async fn console_server_with(
    configure: fn(&mut anchor_pdp::config::ServeArgs),
) -> (TestServer, super::bearer::Pdp, super::bearer::Admin) {
    console_server_from(Options {
        configure: Some(configure),
        ..options()
    })
    .await
}

/// `console_server` started with `options` (which should keep `options()`'s console and
/// tokens).
pub async fn console_server_from(
    options: Options,
) -> (TestServer, super::bearer::Pdp, super::bearer::Admin) {
    let server = TestServer::start_with_options(options).await;
    let (mut pdp, mut admin) = super::bearer::clients(server.addr, Some(&token("admin"))).await;
    let register = |record| proto::RegisterRequest {
        request_id: String::new(),
        record: Some(record),
        expected_revision: None,
    };
    let records = [
        Record::Merchant(proto::Merchant {
            id: "m1".into(),
            tier: proto::MerchantTier::ChineseGoldSupplier as i32,
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
            display_name: "<script>alert('a1')</script>".into(),
            likeness_of: String::new(),
            consent_id: String::new(),
        }),
        Record::Driver(proto::Driver {
            id: "d1".into(),
            owner_merchant_id: "m1".into(),
            identity_reference: "kyc://d1".into(),
            display_name: String::new(),
        }),
        Record::Room(proto::LivestreamRoom {
            id: "r1".into(),
            owner_merchant_id: "m1".into(),
            display_name: String::new(),
        }),
    ];
    for record in records {
        pdp.register(register(record)).await.expect("register");
    }
    admin
        .set_provider_listing(proto::SetProviderListingRequest {
            request_id: String::new(),
            provider_id: "p1".into(),
            listed: true,
            operator: "ops".into(),
            expected_revision: None,
        })
        .await
        .expect("listing");
    for (kind, id) in [
        (proto::RegistrationKind::Driver, "d1"),
        (proto::RegistrationKind::Room, "r1"),
    ] {
        approve(&mut admin, kind, id).await;
    }
    (server, pdp, admin)
}

/// Approves a filing over gRPC, as reviewer `rev`.
pub async fn approve(admin: &mut super::bearer::Admin, kind: proto::RegistrationKind, id: &str) {
    admin
        .review_filing(proto::ReviewFilingRequest {
            kind: kind as i32,
            id: id.into(),
            verdict: proto::Verdict::Approve as i32,
            reviewer: "rev".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("approve {id}: {e}"));
}

/// One HTTP/1.1 exchange: (status, headers lower-cased, body).
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on `stream` (plain TCP, or TLS) and reads the reply to its end; an error
/// is the transport's (a refused handshake, say).
pub fn exchange(
    mut stream: impl std::io::Read + std::io::Write,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify after a whole reply.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status line: {text:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
    // Small bodies come whole or chunked; a chunked one keeps its sizes, which the checks
    // never look for.
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let stream = TcpStream::connect(addr).expect("connect console");
    exchange(stream, method, path, headers, body).expect("an HTTP reply")
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Signs in with `role`'s token; returns the cookie header value and the CSRF token.
pub fn sign_in(addr: SocketAddr, role: &str) -> (String, String) {
    let reply = http(
        addr,
        "POST",
        "/sign-in",
        &[],
        &form(&[("token", &token(role))]),
    );
    assert_eq!(reply.status, 303, "{}", reply.body);
    let set = reply
        .header("set-cookie")
        .expect("a session cookie")
        .to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Max-Age=28800", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    let cookie = set.split(';').next().expect("cookie").to_owned();
    let page = http(addr, "GET", "/review", &[("Cookie", &cookie)], "");
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = csrf_of(&page.body);
    (cookie, csrf)
}

/// The CSRF token a console page's forms carry.
pub fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token on the page: {page}"))
        .to_owned()
}

/// An anchor as stored now.
pub async fn anchor(admin: &mut super::bearer::Admin, id: &str) -> proto::Registration {
    registration(admin, proto::RegistrationKind::Anchor, id).await
}

/// A filing of any kind as stored now.
pub async fn registration(
    admin: &mut super::bearer::Admin,
    kind: proto::RegistrationKind,
    id: &str,
) -> proto::Registration {
    admin
        .get_registration(proto::GetRegistrationRequest {
            kind: kind as i32,
            id: id.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .registration
        .expect("registration")
}
