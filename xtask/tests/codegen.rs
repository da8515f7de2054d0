//! `docs/configuration.md` is generated from the configuration types:
//! this fails when someone changed a type or its doc comment without
//! running `cargo xtask codegen`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::process::Command;

#[test]
fn the_configuration_reference_is_up_to_date() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["codegen", "--check"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
    for key in [
        "`server.config_poll_ms`",
        "`model_list[].deployments[].api_base`",
        "`policy.redis.failure_mode`",
        "`cache.semantic.<name>.min_similarity`",
        "`telemetry.otlp.protocol`",
        "`router_settings.num_retries`",
    ] {
        assert!(page.contains(key), "{key} is documented");
    }
}
