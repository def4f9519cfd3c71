//! Copies the Temporal API's protobuf descriptors (published by temporalio-protos through its
//! `links` metadata) next to this crate's build output, so `orders replay` can read the
//! proto3-JSON histories that the `temporal` CLI and the Web UI produce.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TEMPORALIO_PROTOS_DESCRIPTOR_PATH");
    let source = std::env::var("DEP_TEMPORALIO_PROTOS_DESCRIPTOR_PATH")
        .expect("temporalio-protos publishes its descriptor set path");
    let target =
        std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("temporal_descriptors.bin");
    std::fs::copy(&source, &target).expect("descriptor set can be copied");
}
