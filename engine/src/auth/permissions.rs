//! The one permission table: which role may do what.
//!
//! Roles are per tenant (`owner`, `admin`, `member`, `viewer`); `superadmin` is a platform
//! flag on a user. Every route names one [`Permission`]; the table below is turned into
//! datalog facts (`role_permission(role, permission)`) that the biscuit authorizer checks
//! (see [`super::tokens`]), so the decision is made in one place, by datalog, for every route.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A tenant role, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Member, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// What this role may do inside its tenant.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Owner | Role::Admin => &[
                ConversationsRead,
                ConversationsWrite,
                KeysManage,
                CostsRead,
                CostsManage,
                UsersManage,
                CacheManage,
            ],
            Role::Member => &[ConversationsRead, ConversationsWrite],
            Role::Viewer => &[ConversationsRead],
        }
    }

    /// Whether this role may hand out `other` (an admin cannot make owners).
    pub fn may_grant(self, other: Role) -> bool {
        match self {
            Role::Owner => true,
            Role::Admin => other != Role::Owner,
            Role::Member | Role::Viewer => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`; one of owner, admin, member, viewer"))
    }
}

/// What a route needs. Tenant permissions come from roles; platform permissions only from
/// `superadmin` (or an API key a superadmin scoped with them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Permission {
    #[serde(rename = "conversations:read")]
    ConversationsRead,
    #[serde(rename = "conversations:write")]
    ConversationsWrite,
    /// Create, list and revoke the tenant's API keys.
    #[serde(rename = "keys:manage")]
    KeysManage,
    #[serde(rename = "costs:read")]
    CostsRead,
    /// Set the tenant's (and its users') budgets.
    #[serde(rename = "costs:manage")]
    CostsManage,
    /// Add users to the tenant.
    #[serde(rename = "users:manage")]
    UsersManage,
    /// Purge the tenant's response cache.
    #[serde(rename = "cache:manage")]
    CacheManage,
    /// Platform: live actor inspection and drills (`/admin/*`). Sees every tenant's actors.
    #[serde(rename = "admin:actors")]
    AdminActors,
    /// Platform: create tenants and their users.
    #[serde(rename = "tenants:manage")]
    TenantsManage,
    /// Platform: rotate token signing keys.
    #[serde(rename = "signing_keys:rotate")]
    SigningKeysRotate,
    /// Platform: edit the model price table.
    #[serde(rename = "prices:manage")]
    PricesManage,
}

impl Permission {
    pub const ALL: [Permission; 11] = [
        Permission::ConversationsRead,
        Permission::ConversationsWrite,
        Permission::KeysManage,
        Permission::CostsRead,
        Permission::CostsManage,
        Permission::UsersManage,
        Permission::CacheManage,
        Permission::AdminActors,
        Permission::TenantsManage,
        Permission::SigningKeysRotate,
        Permission::PricesManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ConversationsRead => "conversations:read",
            Permission::ConversationsWrite => "conversations:write",
            Permission::KeysManage => "keys:manage",
            Permission::CostsRead => "costs:read",
            Permission::CostsManage => "costs:manage",
            Permission::UsersManage => "users:manage",
            Permission::CacheManage => "cache:manage",
            Permission::AdminActors => "admin:actors",
            Permission::TenantsManage => "tenants:manage",
            Permission::SigningKeysRotate => "signing_keys:rotate",
            Permission::PricesManage => "prices:manage",
        }
    }

    /// Platform permissions cross the tenant wall, so only a superadmin holds them.
    pub fn is_platform(self) -> bool {
        matches!(
            self,
            Permission::AdminActors
                | Permission::TenantsManage
                | Permission::SigningKeysRotate
                | Permission::PricesManage
        )
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown permission `{s}`"))
    }
}

/// The table as datalog facts, loaded into every authorizer.
pub fn datalog_facts() -> String {
    let mut out = String::new();
    for role in Role::ALL {
        for permission in role.permissions() {
            out.push_str(&format!("role_permission(\"{role}\", \"{permission}\");\n"));
        }
    }
    for permission in Permission::ALL.into_iter().filter(|p| p.is_platform()) {
        out.push_str(&format!("platform_permission(\"{permission}\");\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_viewers_only_read() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), p);
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert!(r.permissions().iter().all(|p| !p.is_platform()), "{r}");
        }
        assert_eq!(Role::Viewer.permissions(), &[Permission::ConversationsRead]);
        assert!(!Role::Admin.may_grant(Role::Owner));
        assert!(datalog_facts().contains("role_permission(\"viewer\", \"conversations:read\");"));
    }
}
