//! The [`AccountStore`] contract: what every store must do, written once and run against
//! each implementation (`memory.rs` and `postgres.rs` call every function here from their
//! tests). Each function expects an empty store.

use std::collections::HashSet;
use std::sync::Arc;

use super::{
    AccountError, AccountStore, ApiKey, Membership, Mfa, RefreshOutcome, RefreshToken,
    StoredSigningKey, Tenant, User,
};
use crate::auth::permissions::{Permission, Role};

fn tenant(id: &str, created_at_ms: u64) -> Tenant {
    Tenant {
        id: id.to_owned(),
        name: format!("Tenant {id}"),
        requests_per_minute: None,
        tokens_per_minute: None,
        created_at_ms,
    }
}

pub fn user(id: &str, email: &str) -> User {
    User {
        id: id.to_owned(),
        email: email.to_owned(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$fake${id}"),
        superadmin: false,
        mfa: None,
        created_at_ms: 1_700_000_000_123,
    }
}

fn api_key(id: &str, tenant_id: &str, user_id: &str, created_at_ms: u64) -> ApiKey {
    ApiKey {
        id: id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        user_id: user_id.to_owned(),
        name: format!("key {id}"),
        scopes: vec![Permission::ConversationsRead, Permission::ConversationsWrite],
        hash: vec![7; 32],
        requests_per_minute: Some(60),
        created_at_ms,
        last_used_at_ms: None,
        revoked_at_ms: None,
    }
}

pub fn refresh(hash: u8, family: &str, expires_at_ms: u64) -> RefreshToken {
    RefreshToken {
        hash: vec![hash; 32],
        family_id: family.to_owned(),
        tenant_id: "t1".to_owned(),
        user_id: "u1".to_owned(),
        expires_at_ms,
    }
}

const NOW: u64 = 1_700_000_000_000;

pub async fn tenants(store: &dyn AccountStore) {
    assert_eq!(store.list_tenants().await.unwrap(), vec![]);
    let mut limited = tenant("t2", NOW + 5);
    limited.requests_per_minute = Some(600);
    limited.tokens_per_minute = Some(100_000);
    assert_eq!(store.create_tenant(limited.clone()).await.unwrap(), limited);
    store.create_tenant(tenant("t1", NOW + 1)).await.unwrap();
    store.create_tenant(tenant("t0", NOW + 5)).await.unwrap();
    assert_eq!(store.create_tenant(tenant("t1", NOW + 9)).await, Err(AccountError::Conflict));
    assert_eq!(store.get_tenant("t2").await.unwrap(), limited);
    assert_eq!(store.get_tenant("nope").await, Err(AccountError::NotFound));
    let ids: Vec<String> = store.list_tenants().await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(ids, ["t1", "t0", "t2"], "by creation time, then id");
}

pub async fn users(store: &dyn AccountStore) {
    let alice = user("u1", "alice@example.com");
    assert_eq!(store.create_user(alice.clone()).await.unwrap(), alice);
    assert_eq!(store.get_user("u1").await.unwrap(), alice);
    assert_eq!(store.find_user_by_email("alice@example.com").await.unwrap(), Some(alice.clone()));
    assert_eq!(store.find_user_by_email("bob@example.com").await.unwrap(), None);
    assert_eq!(store.get_user("u9").await, Err(AccountError::NotFound));
    // The email is unique, and so is the id.
    assert_eq!(
        store.create_user(user("u2", "alice@example.com")).await,
        Err(AccountError::Conflict)
    );
    assert_eq!(
        store.create_user(user("u1", "other@example.com")).await,
        Err(AccountError::Conflict)
    );
    assert_eq!(store.find_user_by_email("other@example.com").await.unwrap(), None);

    store.set_password("u1", "$argon2id$new".to_owned()).await.unwrap();
    store.set_superadmin("u1", true).await.unwrap();
    let mfa = Mfa { secret: vec![1, 2, 3, 4, 5], confirmed: false, recovery_hashes: vec![] };
    store.set_mfa("u1", Some(mfa.clone())).await.unwrap();
    let stored = store.get_user("u1").await.unwrap();
    assert_eq!(
        (stored.password_hash.as_str(), stored.superadmin, stored.mfa),
        ("$argon2id$new", true, Some(mfa))
    );
    let confirmed = Mfa {
        secret: vec![9; 20],
        confirmed: true,
        recovery_hashes: vec![vec![1; 32], vec![2; 32]],
    };
    store.set_mfa("u1", Some(confirmed.clone())).await.unwrap();
    assert_eq!(store.get_user("u1").await.unwrap().mfa, Some(confirmed));
    store.set_mfa("u1", None).await.unwrap();
    assert_eq!(store.find_user_by_email("alice@example.com").await.unwrap().unwrap().mfa, None);

    assert_eq!(store.set_password("u9", "x".into()).await, Err(AccountError::NotFound));
    assert_eq!(store.set_superadmin("u9", true).await, Err(AccountError::NotFound));
    assert_eq!(store.set_mfa("u9", None).await, Err(AccountError::NotFound));

    // A user created with MFA keeps it.
    let mut carol = user("u3", "carol@example.com");
    carol.mfa = Some(Mfa { secret: vec![3; 20], confirmed: true, recovery_hashes: vec![] });
    store.create_user(carol.clone()).await.unwrap();
    assert_eq!(store.get_user("u3").await.unwrap(), carol);
}

pub async fn memberships(store: &dyn AccountStore) {
    store.create_tenant(tenant("t1", NOW)).await.unwrap();
    store.create_tenant(tenant("t2", NOW)).await.unwrap();
    store.create_user(user("u1", "a@example.com")).await.unwrap();
    store.create_user(user("u2", "b@example.com")).await.unwrap();
    let m = |t: &str, u: &str, role| Membership { tenant_id: t.into(), user_id: u.into(), role };
    assert_eq!(
        store.put_membership(m("t1", "u9", Role::Member)).await,
        Err(AccountError::NotFound)
    );
    assert_eq!(
        store.put_membership(m("t9", "u1", Role::Member)).await,
        Err(AccountError::NotFound)
    );
    store.put_membership(m("t2", "u1", Role::Viewer)).await.unwrap();
    store.put_membership(m("t1", "u1", Role::Member)).await.unwrap();
    store.put_membership(m("t1", "u2", Role::Owner)).await.unwrap();
    // Changing a role replaces the membership.
    store.put_membership(m("t1", "u1", Role::Admin)).await.unwrap();
    assert_eq!(
        store.memberships_of("u1").await.unwrap(),
        vec![m("t1", "u1", Role::Admin), m("t2", "u1", Role::Viewer)]
    );
    assert_eq!(
        store.members("t1").await.unwrap(),
        vec![m("t1", "u1", Role::Admin), m("t1", "u2", Role::Owner)]
    );
    assert_eq!(store.members("t2").await.unwrap(), vec![m("t2", "u1", Role::Viewer)]);
    assert_eq!(store.members("t9").await.unwrap(), vec![]);
    assert_eq!(store.memberships_of("u9").await.unwrap(), vec![]);
}

pub async fn api_keys(store: &dyn AccountStore) {
    store.create_tenant(tenant("t1", NOW)).await.unwrap();
    store.create_tenant(tenant("t2", NOW)).await.unwrap();
    store.create_user(user("u1", "a@example.com")).await.unwrap();
    store.create_user(user("u2", "b@example.com")).await.unwrap();
    let first = api_key("keyaaaaaaaa1", "t1", "u1", NOW + 2);
    let mut second = api_key("keyaaaaaaaa2", "t1", "u1", NOW + 1);
    second.scopes = vec![Permission::KeysManage];
    second.requests_per_minute = None;
    let other = api_key("keybbbbbbbb1", "t2", "u2", NOW);
    for key in [&first, &second, &other] {
        store.create_api_key((*key).clone()).await.unwrap();
    }
    assert_eq!(store.create_api_key(first.clone()).await, Err(AccountError::Conflict));
    assert_eq!(store.find_api_key("keyaaaaaaaa1").await.unwrap(), Some(first.clone()));
    assert_eq!(store.find_api_key("keyzzzzzzzzz").await.unwrap(), None);
    // Listing is per tenant, oldest first.
    assert_eq!(store.list_api_keys("t1").await.unwrap(), vec![second.clone(), first.clone()]);
    assert_eq!(store.list_api_keys("t2").await.unwrap(), vec![other.clone()]);
    // Another tenant cannot revoke a key it does not own.
    assert_eq!(
        store.revoke_api_key("t2", "keyaaaaaaaa1", NOW + 10).await,
        Err(AccountError::NotFound)
    );
    assert_eq!(store.find_api_key("keyaaaaaaaa1").await.unwrap().unwrap().revoked_at_ms, None);
    store.revoke_api_key("t1", "keyaaaaaaaa1", NOW + 10).await.unwrap();
    // Revoking again keeps the first time.
    store.revoke_api_key("t1", "keyaaaaaaaa1", NOW + 20).await.unwrap();
    assert_eq!(store.revoke_api_key("t1", "keyzzzzzzzzz", NOW).await, Err(AccountError::NotFound));
    store.touch_api_key("keyaaaaaaaa2", NOW + 30).await.unwrap();
    store.touch_api_key("keyzzzzzzzzz", NOW + 30).await.unwrap();
    let keys = store.list_api_keys("t1").await.unwrap();
    assert_eq!(keys[1].revoked_at_ms, Some(NOW + 10));
    assert_eq!(keys[0].last_used_at_ms, Some(NOW + 30));
    assert_eq!(keys[0].scopes, vec![Permission::KeysManage]);
    assert_eq!(store.find_api_key("keybbbbbbbb1").await.unwrap(), Some(other));
}

pub async fn refresh_tokens(store: &dyn AccountStore) {
    let later = NOW + 3_600_000;
    assert_eq!(store.use_refresh(&[1; 32], NOW).await.unwrap(), RefreshOutcome::Invalid);
    store.insert_refresh(refresh(1, "f1", later)).await.unwrap();
    assert_eq!(
        store.use_refresh(&[1; 32], NOW).await.unwrap(),
        RefreshOutcome::Valid(refresh(1, "f1", later))
    );
    // The next token of the family works once…
    store.insert_refresh(refresh(2, "f1", later)).await.unwrap();
    assert!(matches!(store.use_refresh(&[2; 32], NOW).await.unwrap(), RefreshOutcome::Valid(_)));
    store.insert_refresh(refresh(3, "f1", later)).await.unwrap();
    // …and the spent first one presented again is reuse: the family is revoked.
    assert_eq!(
        store.use_refresh(&[1; 32], NOW).await.unwrap(),
        RefreshOutcome::Reused { family_id: "f1".into() }
    );
    assert!(store.revoked_families().await.unwrap().contains(&"f1".to_owned()));
    // The family's current token is dead too, and so is a token issued after the revocation.
    assert_eq!(store.use_refresh(&[3; 32], NOW).await.unwrap(), RefreshOutcome::Invalid);
    store.insert_refresh(refresh(4, "f1", later)).await.unwrap();
    assert_eq!(store.use_refresh(&[4; 32], NOW).await.unwrap(), RefreshOutcome::Invalid);

    // Expired.
    store.insert_refresh(refresh(5, "f2", NOW)).await.unwrap();
    assert_eq!(store.use_refresh(&[5; 32], NOW).await.unwrap(), RefreshOutcome::Invalid);
    // Logout revokes a family without any reuse.
    store.insert_refresh(refresh(6, "f3", later)).await.unwrap();
    store.revoke_family("f3").await.unwrap();
    store.revoke_family("f3").await.unwrap();
    assert_eq!(store.use_refresh(&[6; 32], NOW).await.unwrap(), RefreshOutcome::Invalid);
    // Revoking a family with no tokens (yet) is remembered too.
    store.revoke_family("f4").await.unwrap();
    let revoked: HashSet<String> = store.revoked_families().await.unwrap().into_iter().collect();
    assert_eq!(revoked, HashSet::from(["f1".into(), "f3".into(), "f4".into()]));
    assert!(!revoked.contains("f2"));
}

/// Many callers presenting one refresh token at once: exactly one gets `Valid`, and the
/// family ends up revoked.
pub async fn refresh_reuse_race(store: Arc<dyn AccountStore>) {
    store.insert_refresh(refresh(9, "race", NOW + 3_600_000)).await.unwrap();
    let attempts = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.use_refresh(&[9; 32], NOW).await })
    });
    let outcomes: Vec<RefreshOutcome> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let valid = outcomes.iter().filter(|o| matches!(o, RefreshOutcome::Valid(_))).count();
    let reused = outcomes.iter().filter(|o| matches!(o, RefreshOutcome::Reused { .. })).count();
    // The first to come after the winner sees reuse and revokes the family; those after it
    // find a revoked family (`Invalid`). Never a second `Valid`.
    assert_eq!(valid, 1, "{outcomes:?}");
    assert!(reused >= 1, "{outcomes:?}");
    assert!(store.revoked_families().await.unwrap().contains(&"race".to_owned()));
}

pub async fn signing_keys(store: &dyn AccountStore) {
    assert_eq!(store.signing_keys().await.unwrap(), vec![]);
    let key = |id: u32, byte: u8| StoredSigningKey {
        id,
        private_key: vec![byte; 32],
        created_at_ms: NOW + u64::from(id),
    };
    store.add_signing_key(key(2, 20)).await.unwrap();
    store.add_signing_key(key(10, 100)).await.unwrap();
    store.add_signing_key(key(1, 10)).await.unwrap();
    assert_eq!(store.add_signing_key(key(2, 99)).await, Err(AccountError::Conflict));
    assert_eq!(store.signing_keys().await.unwrap(), vec![key(1, 10), key(2, 20), key(10, 100)]);
}
