//! Traces over OTLP/gRPC (`--otlp-endpoint`): the `tracing` spans (one `rpc` span per gRPC call,
//! with its method and, for Authorize, its decision id) exported in batches to a collector. And
//! the log filter, which a SIGHUP may change.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

/// Sets the log filter from directives (`info`, `anchor_pdp=debug,info`).
pub type FilterReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_FILTER: std::sync::OnceLock<FilterReload> = std::sync::OnceLock::new();

/// Registers how the running log filter is replaced (once, by `main`).
pub fn set_log_filter_reload(reload: FilterReload) {
    let _ = LOG_FILTER.set(reload);
}

/// Replaces the log filter with `directives`; false (nothing done) when RUST_LOG sets it.
pub fn reload_log_filter(directives: &str) -> Result<bool, String> {
    match LOG_FILTER.get() {
        Some(reload) => reload(directives).map(|()| true),
        None => Ok(false),
    }
}

/// A tracer exporting to `endpoint` (`http://host:4317`). Call inside the runtime: the exporter's
/// gRPC channel runs on it. Shut the provider down at exit to send what is still queued.
pub fn otlp(endpoint: &str) -> Result<(SdkTracerProvider, Tracer), String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("anchor-pdp").build())
        .build();
    let tracer = provider.tracer("anchor-pdp");
    Ok((provider, tracer))
}
