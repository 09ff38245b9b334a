//! Separation of duties and four eyes: roles that check each other are
//! never held by one principal, every principal's creation names both
//! people, an approval is spent by one reveal under its own ticket, a
//! logout cannot be undone by a racing request, and a seal never waits on
//! the audit log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use axum::Router;
use common::*;
use serde_json::{Value, json};
use strongroom::access::Role;
use strongroom::clock::ManualClock;
use strongroom::keyring::SealMethod;
use strongroom::store::StoreError;
use zeroize::Zeroizing;

const STAFF_PASSWORD: &str = "staff password 12";

async fn login(app: &Router, name: &str) -> String {
    let reply = call(
        app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": name, "password": STAFF_PASSWORD})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["token"].as_str().unwrap().to_owned()
}

async fn audit_entries(app: &Router, admin: &str, action: &str) -> Vec<Value> {
    let page = call(
        app,
        "GET",
        &format!("/v1/audit?action={action}&limit=1000"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    page.body["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn one_principal_never_holds_roles_that_check_each_other() {
    let vault = passphrase_vault();
    let app = vault.app();
    let admin = vault.admin_api_key.clone();
    let refused = [
        ("service", json!(["admin", "payment_service"])),
        ("service", json!(["auditor", "payment_service"])),
        (
            "staff",
            json!(["compliance_officer", "compliance_approver"]),
        ),
        ("staff", json!(["admin", "compliance_officer"])),
        ("staff", json!(["admin", "compliance_approver"])),
        ("staff", json!(["auditor", "compliance_officer"])),
        ("staff", json!(["auditor", "compliance_approver"])),
    ];
    for (i, (kind, roles)) in refused.iter().enumerate() {
        let name = format!("combo{i}");
        let mut body = json!({"name": name, "kind": kind, "roles": roles});
        if *kind == "staff" {
            body["password"] = json!(STAFF_PASSWORD);
        }
        let reply = call(&app, "POST", "/v1/principals", Some(&admin), Some(body)).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (422, Some("validation_failed")),
            "{roles}: {}",
            reply.body
        );
        assert_eq!(reply.body["errors"][0]["field"], "roles", "{}", reply.body);
        // Nothing was created.
        let list = call(&app, "GET", "/v1/principals", Some(&admin), None).await;
        assert!(!list.body.to_string().contains(&name), "{roles} created");
    }
    // Outside a request too (dev, init, tests).
    assert!(
        vault
            .state
            .create_staff_now(
                "test",
                "both",
                vec![Role::ComplianceOfficer, Role::ComplianceApprover],
                STAFF_PASSWORD,
            )
            .is_err()
    );
    assert!(
        vault
            .state
            .create_service_now("test", "both", vec![Role::Admin, Role::PaymentService])
            .is_err()
    );
    // An admin may also be an auditor.
    let allowed = call(
        &app,
        "POST",
        "/v1/principals",
        Some(&admin),
        Some(json!({"name": "ops", "kind": "service", "roles": ["admin", "auditor"]})),
    )
    .await;
    assert_eq!(allowed.status, 201, "{}", allowed.body);
}

#[tokio::test]
async fn creating_a_principal_is_audited_with_both_names() {
    let vault = passphrase_vault();
    let app = vault.app();
    let admin = vault.admin_api_key.clone();
    let staff_admin = call(
        &app,
        "POST",
        "/v1/principals",
        Some(&admin),
        Some(json!({"name": "root-admin", "kind": "staff", "roles": ["admin"], "password": STAFF_PASSWORD})),
    )
    .await;
    assert_eq!(staff_admin.status, 201);
    let session = login(&app, "root-admin").await;
    for (name, role) in [
        ("mallory-officer", "compliance_officer"),
        ("mallory-approver", "compliance_approver"),
    ] {
        let reply = call(
            &app,
            "POST",
            "/v1/principals",
            Some(&session),
            Some(
                json!({"name": name, "kind": "staff", "roles": [role], "password": STAFF_PASSWORD}),
            ),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        let id = reply.body["id"].as_str().unwrap().to_owned();
        let entries = audit_entries(&app, &admin, "principal.create").await;
        let entry = entries
            .iter()
            .find(|e| e["target"] == id.as_str())
            .expect("creation audited");
        let reason = entry["reason"].as_str().unwrap();
        assert!(
            reason.contains("root-admin") && reason.contains(name) && reason.contains(role),
            "{reason}"
        );
        assert_ne!(entry["actor"], id.as_str());
    }
}

struct Desk {
    vault: TestVault,
    app: Router,
    officer: String,
    approver: String,
    kyc_id: String,
}

async fn desk() -> Desk {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-11-27 09:00 UTC),
    ));
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.into())),
        fast_settings(),
        clock,
        test_settings(),
    );
    let app = vault.app();
    let payments = vault.service("payments", Role::PaymentService);
    vault.staff("officer", Role::ComplianceOfficer, STAFF_PASSWORD);
    vault.staff("approver", Role::ComplianceApprover, STAFF_PASSWORD);
    let created = call(
        &app,
        "POST",
        "/v1/records/kyc",
        Some(&payments),
        Some(json!({
            "subject_ref": "user-42",
            "legal_name": {"given": "Ada", "family": "Lovelace"},
            "date_of_birth": "1815-12-10",
            "national_id": {"type": "passport", "number": "925076473", "country": "GB"}
        })),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    Desk {
        officer: login(&app, "officer").await,
        approver: login(&app, "approver").await,
        kyc_id: created.body["id"].as_str().unwrap().to_owned(),
        vault,
        app,
    }
}

impl Desk {
    /// An approved request for the national id under `ticket`.
    async fn approval(&self, ticket: &str) -> String {
        let created = call(
            &self.app,
            "POST",
            "/v1/access-requests",
            Some(&self.officer),
            Some(json!({"record_id": self.kyc_id, "fields": ["national_id"], "reason": "AML review", "ticket": ticket})),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.body["id"].as_str().unwrap().to_owned();
        let approved = call(
            &self.app,
            "POST",
            &format!("/v1/access-requests/{id}/approve"),
            Some(&self.approver),
            None,
        )
        .await;
        assert_eq!(approved.status, 200, "{}", approved.body);
        id
    }

    async fn reveal(&self, ticket: &str) -> Reply {
        call(
            &self.app,
            "POST",
            &format!("/v1/records/{}/reveal", self.kyc_id),
            Some(&self.officer),
            Some(json!({"fields": ["national_id"], "reason": "AML review", "ticket": ticket})),
        )
        .await
    }
}

#[tokio::test]
async fn an_approval_is_spent_by_one_reveal_under_its_own_ticket() {
    let d = desk().await;
    let ar = d.approval("CASE-1").await;
    // Another case's ticket does not carry this case's approval.
    let other = d.reveal("CASE-2").await;
    assert_eq!(
        (other.status, other.body["code"].as_str()),
        (403, Some("approval_required"))
    );
    assert!(!other.body.to_string().contains("925076473"));
    let first = d.reveal("CASE-1").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["fields"]["national_id"]["number"], "925076473");
    let again = d.reveal("CASE-1").await;
    assert_eq!(
        (again.status, again.body["code"].as_str()),
        (403, Some("approval_required"))
    );
    assert!(!again.body.to_string().contains("925076473"));
    // A spent approval cannot be decided again.
    let redecided = call(
        &d.app,
        "POST",
        &format!("/v1/access-requests/{ar}/approve"),
        Some(&d.approver),
        None,
    )
    .await;
    assert_eq!(redecided.status, 409);
    let reveals = audit_entries(&d.app, &d.vault.admin_api_key, "record.reveal").await;
    let allowed: Vec<&Value> = reveals
        .iter()
        .filter(|e| e["outcome"] == "allowed")
        .collect();
    assert_eq!(allowed.len(), 1);
    assert!(allowed[0]["reason"].as_str().unwrap().contains(&ar));
}

#[tokio::test]
async fn parallel_reveals_spend_one_approval_once() {
    let d = desk().await;
    d.approval("CASE-9").await;
    let attempts: Vec<_> = (0..24)
        .map(|_| {
            let app = d.app.clone();
            let officer = d.officer.clone();
            let path = format!("/v1/records/{}/reveal", d.kyc_id);
            tokio::spawn(async move {
                call(
                    &app,
                    "POST",
                    &path,
                    Some(&officer),
                    Some(json!({"fields": ["national_id"], "reason": "AML review", "ticket": "CASE-9"})),
                )
                .await
            })
        })
        .collect();
    let mut revealed = 0;
    for attempt in attempts {
        let reply = attempt.await.unwrap();
        match reply.status {
            200 => revealed += 1,
            403 => assert_eq!(reply.body["code"], "approval_required"),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(revealed, 1, "one approval revealed {revealed} times");
}

#[tokio::test]
async fn a_racing_request_cannot_bring_back_a_session_that_logged_out() {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-11-27 09:00 UTC),
    ));
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.into())),
        fast_settings(),
        clock.clone(),
        test_settings(),
    );
    let app = vault.app();
    vault.staff("alice", Role::Auditor, STAFF_PASSWORD);
    let token = login(&app, "alice").await;
    // Late enough that the next request moves the session's last-seen time.
    clock.advance(time::Duration::minutes(2));
    let keys = vault.keyring.keys().unwrap();
    let racing = vault
        .state
        .principals
        .authenticate(
            &keys.credential_key().unwrap(),
            &vault.state.settings.sessions,
            &token,
        )
        .unwrap();
    let touch = racing.touch.expect("a request two minutes later touches");
    drop(keys);
    // The logout lands between the racing request's read and its touch.
    assert_eq!(
        status_of(&app, "POST", "/v1/auth/logout", Some(&token), None).await,
        204
    );
    assert!(matches!(
        vault.store.commit(touch),
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        status_of(&app, "GET", "/v1/audit?limit=1", Some(&token), None).await,
        401,
        "the session came back"
    );
}

#[tokio::test]
async fn a_seal_never_waits_on_the_audit_log() {
    let (vault, faulty) = faulty_vault();
    let app = vault.app();
    let admin = vault.admin_api_key.clone();
    faulty.set_failing(true);
    let reply = call(&app, "POST", "/v1/sys/seal", Some(&admin), None).await;
    assert_eq!(
        (reply.status, reply.body["sealed"].as_bool()),
        (200, Some(true)),
        "{}",
        reply.body
    );
    assert!(
        vault.keyring.is_sealed(),
        "an audit failure kept the vault unsealed"
    );
    faulty.set_failing(false);
    assert_eq!(
        status_of(&app, "GET", "/v1/sys/health", None, None).await,
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_never_waits_on_a_hanging_store() {
    let (vault, faulty) = faulty_vault();
    let app = vault.app();
    let admin = vault.admin_api_key.clone();
    // Every flush hangs, as on a dying disk: neither the seal's entry nor
    // its checkpoint can become durable.
    faulty.hold_flushes(true);
    let seal =
        tokio::spawn(async move { call(&app, "POST", "/v1/sys/seal", Some(&admin), None).await });
    let reply = tokio::time::timeout(std::time::Duration::from_secs(40), seal)
        .await
        .expect("the seal hung with the store")
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(vault.keyring.is_sealed(), "a hanging store kept the keys");
    faulty.hold_flushes(false);
}
