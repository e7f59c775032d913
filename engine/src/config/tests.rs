use std::collections::BTreeMap;

use secrecy::ExposeSecret;

use super::*;

fn load(toml: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
    let dir = std::env::temp_dir().join(format!("switchyard-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, toml).unwrap();
    let env: BTreeMap<&str, &str> = env.iter().copied().collect();
    let result = Config::load(Some(&path), &env);
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

fn error_text(result: anyhow::Result<Config>) -> String {
    format!("{:#}", result.expect_err("config should be rejected"))
}

#[test]
fn with_nothing_configured_only_the_mock_model_exists() {
    let config = Config::load(None, &BTreeMap::new()).unwrap();
    let names: Vec<_> = config.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["mock"]);
    assert_eq!(config.default_model(), "mock");
    assert!(config.database.is_none() && config.redis.is_none());
}

#[test]
fn provider_keys_bring_the_catalogue_with_cross_provider_fallbacks() {
    let env = BTreeMap::from([
        ("OPENAI_API_KEY", "sk-test-openai"),
        ("ANTHROPIC_API_KEY", "sk-ant-test"),
    ]);
    let config = Config::load(None, &env).unwrap();
    let gpt = config.models.iter().find(|m| m.name == "gpt-4o").unwrap();
    assert_eq!(gpt.fallbacks, ["claude-sonnet-4-5", "gpt-4.1-mini"]);
    assert_eq!(gpt.endpoint.api_key.as_ref().unwrap().expose_secret(), "sk-test-openai");
    assert_eq!(config.default_model(), "gpt-4o");
    assert!(config.models.iter().any(|m| m.name == "mock"));
}

#[test]
fn fallbacks_to_providers_without_keys_are_left_out() {
    let env = BTreeMap::from([("ANTHROPIC_API_KEY", "sk-ant-test")]);
    let config = Config::load(None, &env).unwrap();
    let sonnet = config.models.iter().find(|m| m.name == "claude-sonnet-4-5").unwrap();
    assert_eq!(sonnet.fallbacks, ["claude-haiku-4-5"]);
    assert!(config.models.iter().all(|m| m.endpoint.provider != ProviderKind::Openai));
}

#[test]
fn base_url_variables_point_every_model_of_a_provider_elsewhere() {
    let config = load(
        r#"
        [[models]]
        name = "fast"
        provider = "openai"
        upstream_model = "gpt-4o-mini"
        "#,
        &[("OPENAI_API_KEY", "sk-x"), ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")],
    )
    .unwrap();
    assert_eq!(config.models[0].endpoint.base_url.as_deref(), Some("http://127.0.0.1:9/v1"));
}

#[test]
fn a_models_in_flight_limit_is_set_per_model_and_must_be_positive() {
    let model = |extra: &str| {
        format!(
            "[[models]]\nname = \"m\"\nprovider = \"openai_compatible\"\n\
             upstream_model = \"x\"\nbase_url = \"http://127.0.0.1:9/v1\"\n{extra}"
        )
    };
    let config = load(&model("max_in_flight = 2000\nqueue_timeout_ms = 5"), &[]).unwrap();
    assert_eq!(
        (config.models[0].max_in_flight, config.models[0].queue_timeout_ms),
        (Some(2000), Some(5))
    );
    let config = load(&model(""), &[]).unwrap();
    assert_eq!(config.models[0].max_in_flight, None);
    let error = error_text(load(&model("max_in_flight = 0"), &[]));
    assert!(error.contains("max_in_flight must be at least 1"), "{error}");
}

#[test]
fn the_checkpoint_interval_is_a_database_option_within_bounds() {
    let with = |ms: u64| {
        load(
            &format!("[database]\nurl = \"postgres://db/x\"\ncheckpoint_interval_ms = {ms}\n"),
            &[],
        )
    };
    assert_eq!(with(1000).unwrap().database.unwrap().checkpoint_interval_ms, 1000);
    let error = error_text(with(0));
    assert!(error.contains("database.checkpoint_interval_ms"), "{error}");
    let default = load("[database]\nurl = \"postgres://db/x\"\n", &[]).unwrap();
    assert_eq!(default.database.unwrap().checkpoint_interval_ms, 250);
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let text = error_text(load("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n", &[]));
    assert!(text.contains("lisen"), "{text}");
    let text = error_text(load(
        "[[models]]\nname = \"m\"\nprovider = \"mock\"\nupstream_model = \"x\"\ntemprature = 1\n",
        &[],
    ));
    assert!(text.contains("temprature"), "{text}");
}

#[test]
fn a_model_without_its_key_names_the_variable() {
    let text = error_text(load(
        "[[models]]\nname = \"g\"\nprovider = \"openai\"\nupstream_model = \"gpt-4o\"\n",
        &[],
    ));
    assert!(text.contains("models[0]") && text.contains("OPENAI_API_KEY"), "{text}");
}

#[test]
fn unknown_fallbacks_and_aliases_are_rejected() {
    let models = "[[models]]\nname = \"a\"\nprovider = \"mock\"\nupstream_model = \"x\"\nfallbacks = [\"b\"]\n";
    let text = error_text(load(models, &[]));
    assert!(text.contains("models[0] (`a`).fallbacks") && text.contains("`b`"), "{text}");

    let alias = "[[models]]\nname = \"a\"\nprovider = \"mock\"\nupstream_model = \"x\"\n[routing.aliases]\nauto = [\"a\", \"zz\"]\n";
    let text = error_text(load(alias, &[]));
    assert!(text.contains("routing.aliases.auto") && text.contains("zz"), "{text}");
}

#[test]
fn a_bad_listen_variable_fails_with_its_name() {
    let env = BTreeMap::from([("SWITCHYARD_LISTEN", "not-an-address")]);
    let text = format!("{:#}", Config::load(None, &env).unwrap_err());
    assert!(text.contains("SWITCHYARD_LISTEN"), "{text}");
}

#[test]
fn secrets_do_not_appear_in_debug_output() {
    let env = BTreeMap::from([
        ("OPENAI_API_KEY", "sk-very-secret-value"),
        ("DATABASE_URL", "postgres://u:hunter2@db/x"),
    ]);
    let config = Config::load(None, &env).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("sk-very-secret-value") && !debug.contains("hunter2"), "{debug}");
}
