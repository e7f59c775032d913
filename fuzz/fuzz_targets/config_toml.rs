//! Configuration: TOML text → `Config::parse` → `Config::finish` (environment overlay,
//! catalogue, validation), exactly what `switchyard --config` does with a file.
//!
//! Each input is finished twice: with an empty environment, and with the variables an
//! operator typically sets (provider keys, database and Redis URLs, a node id), so both the
//! file-only paths and the overlay paths run. A config that validates must be usable: at
//! least one model, unique names, every fallback and alias naming a model, and a default
//! model that resolves.

#![no_main]

use std::collections::{BTreeMap, HashSet};

use engine::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = match Config::parse(text) {
        Ok(parsed) => parsed,
        Err(error) => {
            let _ = format!("{error:#}");
            return;
        }
    };
    let operator_env = BTreeMap::from([
        ("OPENAI_API_KEY", "sk-fuzz-openai"),
        ("ANTHROPIC_API_KEY", "sk-ant-fuzz"),
        ("DATABASE_URL", "postgres://fuzz@127.0.0.1:5432/fuzz"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("SWITCHYARD_NODE_ID", "node-fuzz"),
        ("SWITCHYARD_LISTEN", "127.0.0.1:0"),
    ]);
    for env in [BTreeMap::new(), operator_env] {
        match parsed.clone().finish(&env) {
            Ok(config) => check_usable(&config),
            Err(error) => {
                let _ = format!("{error:#}");
            }
        }
    }
});

fn check_usable(config: &Config) {
    assert!(!config.models.is_empty(), "a valid config without models");
    let names: HashSet<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names.len(), config.models.len(), "duplicate model names accepted");
    for model in &config.models {
        for fallback in &model.fallbacks {
            assert!(names.contains(fallback.as_str()), "fallback to unknown model `{fallback}`");
        }
    }
    for chain in config.routing.aliases.values() {
        assert!(!chain.is_empty());
        assert!(chain.iter().all(|m| names.contains(m.as_str())));
    }
    // A model, an alias, or `auto` (complexity-based routing, a valid default since #9).
    let default = config.default_model();
    assert!(config.routes_to(default), "default model `{default}` resolves to nothing");
    let _ = format!("{config:?}");
}
