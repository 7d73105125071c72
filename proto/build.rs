//! Compiles the `.proto` files with protox (pure Rust), so no `protoc` is needed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/hush/wire.proto",
        "proto/hush/store.proto",
        "proto/hush/relay.proto",
        "proto/hush/relay_api.proto",
        "proto/hush/client.proto",
        "proto/hush/app.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let mut config = prost_build::Config::new();
    config.type_attribute(".hush.store.v1", "#[derive(zeroize::Zeroize)]");
    config.compile_fds(fds)?;
    Ok(())
}
