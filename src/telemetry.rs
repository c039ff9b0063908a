//! Traces over OTLP/gRPC (`--otlp-endpoint`): the `tracing` spans (one `rpc` span per gRPC call,
//! with its method and, for Authorize, its decision id) exported in batches to a collector.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

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
