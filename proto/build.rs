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
    // Store records hold keys and plaintext, and the messenger's history records hold message
    // content: every copy is wiped when it is dropped (this also forbids moving a field out of
    // one; take it with `std::mem::take` instead).
    let wiped = "#[derive(zeroize::Zeroize, zeroize::ZeroizeOnDrop)]";
    config.message_attribute(".hush.store.v1", wiped);
    // (Typing and Presence hold no content and are `Copy`, which a type with a destructor
    // cannot be.)
    for m in [
        "AppMessage",
        "Text",
        "Reaction",
        "Receipt",
        "Attachment",
        "SyncSent",
        "StoredMessage",
        "Undelivered",
        "HistoryTransfer",
        "BackupMessage",
        "BackupSetting",
    ] {
        config.message_attribute(format!(".hush.app.v1.{m}"), wiped);
    }
    // Boxed and oneof fields (zeroize has no `Box<T>` impl): each message inside wipes itself
    // when dropped. (The skip reaches the oneof's variants too, so its derive does nothing.)
    config.field_attribute(".hush.app.v1.AppMessage.kind", "#[zeroize(skip)]");
    config.enum_attribute(
        ".hush.app.v1.AppMessage.kind",
        "#[derive(zeroize::Zeroize)]",
    );
    config.field_attribute(".hush.app.v1.SyncSent.message", "#[zeroize(skip)]");
    config.compile_fds(fds)?;
    Ok(())
}
