//! Build script: napi-rs's linker setup for the Node addon.

fn main() {
    napi_build::setup();
}
