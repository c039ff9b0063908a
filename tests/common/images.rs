//! An image host for the console's tests: serves `/anchors/<name>` over HTTP/1.1 from a table
//! a test can change (to swap an approved image); any other name under `/anchors/` gets the
//! default PNG. One per test binary, started on first use.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, OnceLock};

/// Name → (content type, bytes).
type Files = Arc<Mutex<HashMap<String, (String, Vec<u8>)>>>;

pub struct ImageHost {
    pub addr: SocketAddr,
    files: Files,
}

impl ImageHost {
    /// The `--console-image-prefix` that maps `oss://anchors/` here.
    pub fn prefix(&self) -> String {
        format!("oss://anchors/=http://{}/anchors/", self.addr)
    }

    /// Serves `bytes` as `content_type` at `/anchors/<name>` from now on.
    pub fn put(&self, name: &str, content_type: &str, bytes: Vec<u8>) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), (content_type.to_owned(), bytes));
    }
}

/// A `size`×`size` PNG: a face-like disc of `rgb` on a light ground (a picture a reviewer can
/// tell apart from another colour's).
pub fn png(size: u32, rgb: [u8; 3]) -> Vec<u8> {
    let mut pixels = Vec::with_capacity((size * size * 3) as usize);
    let c = size as f32 / 2.0;
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f32 - c, y as f32 - c * 0.8);
            let inside = dx * dx + dy * dy < (size as f32 * 0.3).powi(2);
            let body = y as f32 > size as f32 * 0.75 && dx.abs() < size as f32 * 0.3;
            pixels.extend_from_slice(if inside || body {
                &rgb
            } else {
                &[0xdf, 0xe8, 0xf5]
            });
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, size, size);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("png header");
        writer.write_image_data(&pixels).expect("png data");
    }
    out
}

/// The default image: 1024×1024, as a provider's render would be.
pub fn default_png() -> &'static [u8] {
    static DEFAULT: OnceLock<Vec<u8>> = OnceLock::new();
    DEFAULT.get_or_init(|| png(1024, [0xf2, 0xc9, 0xa0]))
}

/// The default image's SHA-256: what a reviewer who saw it approves.
pub fn default_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| anchor_pdp::domain::sha256_hex(default_png()))
}

pub fn image_host() -> &'static ImageHost {
    static HOST: OnceLock<ImageHost> = OnceLock::new();
    HOST.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let files: Files = Arc::default();
        let served = files.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let files = served.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(&stream);
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).is_err() {
                        return;
                    }
                    // The rest of the head, unread otherwise.
                    let mut line = String::new();
                    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                        line.clear();
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or_default();
                    let (status, content_type, body) = match path.strip_prefix("/anchors/") {
                        Some(name) => match files.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
                            Some((t, b)) => ("200 OK", t.clone(), b.clone()),
                            None => ("200 OK", "image/png".to_owned(), default_png().to_vec()),
                        },
                        None => ("404 Not Found", "text/plain".to_owned(), b"no such image".to_vec()),
                    };
                    let mut stream = &stream;
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                });
            }
        });
        ImageHost { addr, files }
    })
}
