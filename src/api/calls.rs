//! What every gRPC call gets before and after its handler: a deadline (the caller's
//! `grpc-timeout`, at most the server's limit) that ends in DEADLINE_EXCEEDED, and a request that
//! cannot be decoded answered as INVALID_ARGUMENT. tonic itself answers the first CANCELLED and
//! the second INTERNAL, which tells clients the wrong thing: retry, or blame the server.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;

/// tonic-prost reports an undecodable message as INTERNAL with prost's error text, which
/// `grpc-message` carries percent-encoded (tonic encodes spaces too).
const DECODE_ERROR_PREFIXES: [&str; 2] = [
    "failed to decode Protobuf message",
    "failed%20to%20decode%20Protobuf%20message",
];

/// tonic's own deadline (from `grpc-timeout`, outside every layer) answers CANCELLED; this
/// layer's fires this much earlier so that the caller hears DEADLINE_EXCEEDED. The timer ticks
/// in milliseconds, so less would race. A deadline no longer than this is answered at once.
const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Every call is answered or abandoned within this (a shorter `grpc-timeout` from the caller
/// wins); a server stream that reads the store (ReadDecisionLog) ends by then too.
pub const CALL_LIMIT: Duration = Duration::from_secs(10);

/// A backup copies and encodes the whole store before its first byte: ~10 s per million
/// anchors here, so it gets longer than other calls (a shorter `grpc-timeout` still wins).
pub const BACKUP_CALL_LIMIT: Duration = Duration::from_secs(3600);
const BACKUP_PATH: &str = "/anchorpdp.v1.PolicyAdmin/Backup";

/// The deadline of a call: the caller's `grpc-timeout`, at most `CALL_LIMIT`.
pub fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> tokio::time::Instant {
    let asked = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    tokio::time::Instant::now() + asked.map_or(CALL_LIMIT, |asked| asked.min(CALL_LIMIT))
}

/// Server streams open at once across every connection (per-connection limits alone let
/// many connections add up).
pub struct StreamSlots {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    cap: usize,
    full: crate::net::HitCounter,
}

impl StreamSlots {
    pub fn new(cap: usize) -> std::sync::Arc<StreamSlots> {
        std::sync::Arc::new(StreamSlots {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(cap)),
            cap,
            full: crate::net::HitCounter::default(),
        })
    }

    /// A slot for one stream, held until the stream ends.
    pub fn take(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            self.full
                .hit("server stream cap reached: stream refused", self.cap as u64);
            Status::resource_exhausted(format!(
                "{} server streams are open, the most this server keeps; retry later",
                self.cap
            ))
        })
    }
}

#[derive(Clone)]
pub struct CallLayer {
    limit: Duration,
}

impl CallLayer {
    /// Every call ends within `limit`, or the caller's shorter deadline.
    pub fn new(limit: Duration) -> Self {
        CallLayer { limit }
    }
}

impl<S> tower::Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct CallService<S> {
    inner: S,
    limit: Duration,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for CallService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let asked = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let path = request.uri().path().to_owned();
        let limit = if path == BACKUP_PATH {
            BACKUP_CALL_LIMIT.max(self.limit)
        } else {
            self.limit
        };
        let deadline = asked.map_or(limit, |asked| {
            asked.min(limit).saturating_sub(DEADLINE_MARGIN)
        });
        if deadline.is_zero() {
            return Box::pin(async move {
                Ok(Status::deadline_exceeded(format!(
                    "the call's deadline ({}) is too short to be met",
                    humantime::format_duration(asked.unwrap_or_default())
                ))
                .into_http())
            });
        }
        // One span per call: what it logs carries the method, and Authorize adds its decision id.
        let span = tracing::info_span!(
            "rpc",
            method = %path,
            decision_id = tracing::field::Empty
        );
        let call = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let Ok(response) = tokio::time::timeout(deadline, call).await else {
                    tracing::debug!(%path, ?deadline, "deadline exceeded");
                    return Ok(Status::deadline_exceeded(format!(
                        "the call's deadline ({} ms) passed before it was answered",
                        deadline.as_millis()
                    ))
                    .into_http());
                };
                let mut response = response?;
                let undecodable = response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|s| s.as_bytes() == b"13")
                    && response.headers().get("grpc-message").is_some_and(|m| {
                        DECODE_ERROR_PREFIXES
                            .iter()
                            .any(|prefix| m.as_bytes().starts_with(prefix.as_bytes()))
                    });
                if undecodable {
                    response.headers_mut().insert(
                        "grpc-status",
                        http::HeaderValue::from_static("3"), // INVALID_ARGUMENT
                    );
                }
                Ok(response)
            },
            span,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        assert_eq!(parse_grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        for bad in ["", "m", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    /// A call slower than the limit is answered DEADLINE_EXCEEDED, except a backup, which
    /// copies the whole store first; the caller's own `grpc-timeout` still bounds it.
    #[tokio::test]
    async fn a_backup_outlives_the_call_limit_but_not_its_callers_deadline() {
        use tower::{Layer, ServiceExt};
        let slow = tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let service = CallLayer::new(Duration::from_millis(100)).layer(slow);
        let status_of = |path: &str, timeout: Option<&str>| {
            let service = service.clone();
            let mut request = http::Request::builder().uri(path);
            if let Some(timeout) = timeout {
                request = request.header("grpc-timeout", timeout);
            }
            let request = request.body(()).unwrap_or_else(|e| panic!("{e}"));
            async move {
                let response = service
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|e| match e {});
                response
                    .headers()
                    .get("grpc-status")
                    .map(|s| s.to_str().unwrap_or_default().to_owned())
            }
        };
        let deadline_exceeded = Some((tonic::Code::DeadlineExceeded as i32).to_string());
        assert_eq!(
            status_of("/anchorpdp.v1.PolicyAdmin/GetDecisionLogStatus", None).await,
            deadline_exceeded
        );
        assert_eq!(status_of(BACKUP_PATH, None).await, None, "answered");
        assert_eq!(status_of(BACKUP_PATH, Some("50m")).await, deadline_exceeded);
    }
}
