//! Gateway hooks as nginx-rtmp, SRS, MediaMTX and OvenMediaEngine send them: the wire
//! exchange and captured bodies.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.0 exchange, as nginx-rtmp and SRS make them.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    http_with(addr, method, path, content_type, &[], body).await
}

/// `http` with more headers (OME's X-OME-Signature).
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\nConnection: Close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    status_and_body(&response)
}

/// An HTTP/1 response's status code (0 if none) and body.
pub fn status_and_body(response: &str) -> (u16, String) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

pub const FORM: &str = "application/x-www-form-urlencoded";

/// nginx-rtmp 1.2.2's on_publish body, as captured, for stream key `key` and client `client`,
/// followed by the publisher's own arguments.
pub fn nginx_publish(key: &str, client: u32, args: &str) -> String {
    format!(
        "app=live&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27&swfurl=&tcurl=rtmp://127.0.0.1:19350/live&pageurl=&addr=127.0.0.1&clientid={client}&call=publish&name={key}&type=live{args}"
    )
}

pub fn nginx_update(key: &str, client: u32, args: &str) -> String {
    format!(
        "app=live&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27&swfurl=&tcurl=rtmp://127.0.0.1:19350/live&pageurl=&addr=127.0.0.1&clientid={client}&call=update_publish&time=2&timestamp=1956&name={key}{args}"
    )
}

pub fn nginx_done(key: &str, client: u32) -> String {
    format!(
        "app=live&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27&swfurl=&tcurl=rtmp://127.0.0.1:19350/live&pageurl=&addr=127.0.0.1&clientid={client}&call=publish_done&name={key}"
    )
}

pub const CLAIMS: &str =
    "&anchor=a1&driver=d1&livestream_type=DAILY_MARKETING&drive_mode=REAL_PERSON";

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

pub fn srs_body(action: &str, stream: &str, param: &str) -> String {
    serde_json::json!({
        "server_id": "vid-0xk989d",
        "service_id": "shx9a5mj",
        "action": action,
        "client_id": "3q8a0q2e",
        "ip": "127.0.0.1",
        "vhost": "__defaultVhost__",
        "app": "live",
        "tcUrl": "rtmp://127.0.0.1:1935/live",
        "stream": stream,
        "param": param,
        "stream_url": format!("/live/{stream}"),
        "stream_id": "vid-124q9y3"
    })
    .to_string()
}

/// MediaMTX's authentication request (as its documentation gives it) for `action` on `path`.
pub fn mediamtx_body(action: &str, path: &str, id: &str, query: &str) -> String {
    serde_json::json!({
        "user": "",
        "password": "",
        "token": "",
        "ip": "127.0.0.1",
        "action": action,
        "path": path,
        "protocol": "rtsp",
        "id": id,
        "query": query
    })
    .to_string()
}

/// OvenMediaEngine's admission request (as its documentation gives it).
pub fn ome_body(direction: &str, status: &str, url: &str, port: u16) -> String {
    serde_json::json!({
        "client": {
            "address": "127.0.0.1",
            "port": port,
            "real_ip": "127.0.0.1",
            "user_agent": "obs-studio"
        },
        "request": {
            "direction": direction,
            "protocol": "rtmp",
            "status": status,
            "url": url,
            "new_url": url,
            "time": "2026-12-07T09:00:00.000Z"
        }
    })
    .to_string()
}
