//! Generates the Rust code of the `.proto` files with the protoc shipped by
//! `protoc-bin-vendored`, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "proto/lb/state/v1/state.proto",
            "proto/lb/admin/v1/admin.proto",
            "proto/lb/peer/v1/peer.proto",
            "proto/grpc/health/v1/health.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
