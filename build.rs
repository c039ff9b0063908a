//! Compiles the public API from `proto/` with protox (pure Rust); the descriptor set is kept
//! for server reflection. The server stubs are generated only with the `server` feature.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/anchorpdp/v1/types.proto",
    "proto/anchorpdp/v1/pdp.proto",
    "proto/anchorpdp/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("anchorpdp_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    if std::env::var_os("CARGO_FEATURE_SERVER").is_some() {
        // Envoy's ext_authz, served from envoy-types' code: only its descriptors, for
        // reflection.
        let envoy = protox::compile(
            ["envoy/service/auth/v3/external_auth.proto"],
            ["proto/third_party"],
        )?;
        std::fs::write(
            out_dir.join("envoy_ext_authz_descriptor.bin"),
            envoy.encode_to_vec(),
        )?;
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .compile_fds(descriptors)?;
    Ok(())
}
