//! Compiles `proto/` with a vendored `protoc`, so a fresh machine needs only
//! cargo, and writes the descriptor set that gRPC reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of set_var: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // BTreeMap for `query` and `attributes`: their few keys decode
        // faster into it than into a HashMap (no hashing, one small node;
        // the HashMap was 14 % of the request path under `perf`), and they
        // encode in key order, so the same event always has the same bytes.
        .btree_map(".")
        .file_descriptor_set_path(out_dir.join("audit_descriptor.bin"))
        .compile_protos(
            &[
                "proto/audit/v1/audit.proto",
                "proto/audit/v1/partitions.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
