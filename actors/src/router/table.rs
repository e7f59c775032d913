//! The routing table: which chain of endpoints serves a requested model name.
//!
//! Built once from [`RouterConfig`] and validated (every name in every chain must be a
//! configured model), then resolved per turn with one or two hash lookups and no
//! allocation: chains are shared `Arc<[usize]>` of endpoint indices.
//!
//! Resolution for tenant `t` and requested name `n`: the tenant's alias `n`, else the
//! global alias `n`, else — when `n` is a model — `n` followed by the tenant's fallbacks for
//! `n` or, failing that, the global ones.

use std::collections::HashMap;
use std::sync::Arc;

use super::RouterConfig;

/// A bad routing table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route `{route}` names unknown model `{model}`")]
    UnknownModel { route: String, model: String },
    #[error("route `{0}` has an empty chain")]
    EmptyChain(String),
    #[error("alias `{0}` has the same name as a model")]
    AliasShadowsModel(String),
}

/// Requested name → chain of endpoint indices.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    global: HashMap<String, Arc<[usize]>>,
    tenants: HashMap<String, HashMap<String, Arc<[usize]>>>,
}

impl RoutingTable {
    /// `models` are the configured model names; index `i` is endpoint `i`.
    pub fn build(config: &RouterConfig, models: &[String]) -> Result<Self, RouteError> {
        let index: HashMap<&str, usize> =
            models.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
        let chain = |route: &str, names: &mut dyn Iterator<Item = &String>| {
            let mut out: Vec<usize> = Vec::new();
            for name in names {
                let i = *index.get(name.as_str()).ok_or_else(|| RouteError::UnknownModel {
                    route: route.to_owned(),
                    model: name.clone(),
                })?;
                if !out.contains(&i) {
                    out.push(i);
                }
            }
            if out.is_empty() {
                return Err(RouteError::EmptyChain(route.to_owned()));
            }
            Ok::<Arc<[usize]>, RouteError>(out.into())
        };
        let check_aliases = |aliases: &HashMap<String, Vec<String>>| match aliases
            .keys()
            .find(|a| index.contains_key(a.as_str()))
        {
            Some(a) => Err(RouteError::AliasShadowsModel(a.clone())),
            None => Ok(()),
        };
        let check_fallbacks = |fallbacks: &HashMap<String, Vec<String>>| match fallbacks
            .keys()
            .find(|m| !index.contains_key(m.as_str()))
        {
            Some(m) => Err(RouteError::UnknownModel { route: m.clone(), model: m.clone() }),
            None => Ok(()),
        };

        check_aliases(&config.aliases)?;
        check_fallbacks(&config.fallbacks)?;
        let mut global = HashMap::new();
        for model in models {
            let fallbacks = config.fallbacks.get(model).into_iter().flatten();
            global
                .insert(model.clone(), chain(model, &mut std::iter::once(model).chain(fallbacks))?);
        }
        for (alias, names) in &config.aliases {
            global.insert(alias.clone(), chain(alias, &mut names.iter())?);
        }

        let mut tenants = HashMap::new();
        for (tenant, routes) in &config.tenants {
            check_aliases(&routes.aliases)?;
            check_fallbacks(&routes.fallbacks)?;
            let mut own = HashMap::new();
            for (model, fallbacks) in &routes.fallbacks {
                own.insert(
                    model.clone(),
                    chain(model, &mut std::iter::once(model).chain(fallbacks))?,
                );
            }
            for (alias, names) in &routes.aliases {
                own.insert(alias.clone(), chain(alias, &mut names.iter())?);
            }
            tenants.insert(tenant.clone(), own);
        }
        Ok(Self { global, tenants })
    }

    /// The chain for `model` as requested by `tenant`, or `None` for an unknown name.
    pub fn resolve(&self, tenant: &str, model: &str) -> Option<&Arc<[usize]>> {
        self.tenants.get(tenant).and_then(|own| own.get(model)).or_else(|| self.global.get(model))
    }
}

#[cfg(test)]
mod tests {
    use super::super::TenantRoutes;
    use super::*;

    fn models() -> Vec<String> {
        ["claude-sonnet", "gpt-4o", "gpt-4o-mini"].map(String::from).to_vec()
    }

    fn config() -> RouterConfig {
        let mut c = RouterConfig::default();
        c.fallbacks.insert("gpt-4o".into(), vec!["claude-sonnet".into(), "gpt-4o-mini".into()]);
        c.aliases.insert("auto".into(), vec!["gpt-4o-mini".into(), "gpt-4o".into()]);
        let mut acme = TenantRoutes::default();
        acme.fallbacks.insert("gpt-4o".into(), vec!["gpt-4o-mini".into()]);
        c.tenants.insert("acme".into(), acme);
        c
    }

    #[test]
    fn resolves_models_aliases_and_tenant_overrides() {
        let t = RoutingTable::build(&config(), &models()).unwrap();
        assert_eq!(&**t.resolve("x", "gpt-4o").unwrap(), &[1, 0, 2]);
        assert_eq!(&**t.resolve("x", "claude-sonnet").unwrap(), &[0], "no fallbacks configured");
        assert_eq!(&**t.resolve("x", "auto").unwrap(), &[2, 1]);
        assert_eq!(&**t.resolve("acme", "gpt-4o").unwrap(), &[1, 2]);
        assert_eq!(&**t.resolve("acme", "auto").unwrap(), &[2, 1], "falls back to global");
        assert!(t.resolve("x", "gpt-5").is_none());
    }

    #[test]
    fn rejects_unknown_models_and_shadowing_aliases() {
        let mut c = config();
        c.fallbacks.insert("gpt-4o-mini".into(), vec!["nope".into()]);
        assert!(matches!(
            RoutingTable::build(&c, &models()),
            Err(RouteError::UnknownModel { model, .. }) if model == "nope"
        ));
        let mut c = config();
        c.aliases.insert("gpt-4o".into(), vec!["gpt-4o-mini".into()]);
        assert_eq!(
            RoutingTable::build(&c, &models()).unwrap_err(),
            RouteError::AliasShadowsModel("gpt-4o".into())
        );
        let mut c = config();
        c.aliases.insert("empty".into(), vec![]);
        assert_eq!(
            RoutingTable::build(&c, &models()).unwrap_err(),
            RouteError::EmptyChain("empty".into())
        );
    }
}
