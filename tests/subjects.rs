//! Subjects, retention and legal holds (docs/lifecycle.md, "Subjects,
//! retention, legal hold"): a subject's records found and shown masked,
//! audited; erased in one step, once, audited per record; erased by the
//! sweeper when due (through a manual clock); never while held; holds
//! released by a second person only; generic values erasable.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use axum::Router;
use common::{
    Reply, STAFF_PASSWORD, TestVault, audit_entries, call, call_with, fast_settings,
    new_vault_with, test_settings,
};
use serde_json::{Value, json};
use strongroom::access::Role;
use strongroom::api::{AppSettings, AppState, sweeper};
use strongroom::clock::ManualClock;
use strongroom::keyring::SealMethod;
use strongroom::lifecycle::{RetentionRule, RetentionSettings};
use strongroom::records::RecordType;
use zeroize::Zeroizing;

const PAN: &str = "4242424242424242";
const WHY: &str = "reason=GDPR%20art.%2015%20request&ticket=DSAR-7";

fn card(subject: &str) -> Value {
    json!({"pan": PAN, "exp_month": 12, "exp_year": 2035, "holder_name": "Ada Lovelace", "subject_ref": subject})
}

fn kyc(subject: &str) -> Value {
    json!({"subject_ref": subject, "legal_name": {"given": "Ada", "family": "Lovelace"}, "date_of_birth": "1815-12-10", "nationality": "GB", "email": "ada@example.org"})
}

fn why() -> Value {
    json!({"reason": "customer asked to be forgotten", "ticket": "DSR-42"})
}

/// A vault with a manual clock, `retention`, the staff of
/// `common::staff_vault` (`olivia` officer, `abel` approver, `adam` admin)
/// plus a second approver `abby`, and a payment service.
struct Setup {
    vault: TestVault,
    app: Router,
    clock: Arc<ManualClock>,
    payments: String,
}

fn setup(retention: RetentionSettings) -> Setup {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-03-01 09:00 UTC),
    ));
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(common::PASSPHRASE.into())),
        fast_settings(),
        clock.clone(),
        AppSettings {
            retention,
            ..test_settings()
        },
    );
    for (name, role) in [
        ("olivia", Role::ComplianceOfficer),
        ("abel", Role::ComplianceApprover),
        ("abby", Role::ComplianceApprover),
        ("adam", Role::Admin),
    ] {
        vault.staff(name, role, STAFF_PASSWORD);
    }
    let payments = vault.service("payments", Role::PaymentService);
    Setup {
        app: vault.app(),
        vault,
        clock,
        payments,
    }
}

fn rules(rules: &[(RecordType, &str)]) -> RetentionSettings {
    RetentionSettings {
        rules: rules
            .iter()
            .map(|(t, text)| (*t, RetentionRule::parse(text).unwrap()))
            .collect(),
        ..RetentionSettings::default()
    }
}

impl Setup {
    /// A fresh session of staff member `name` (sessions idle out as the
    /// manual clock moves).
    async fn login(&self, name: &str) -> String {
        let reply = call(
            &self.app,
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"username": name, "password": STAFF_PASSWORD})),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["token"].as_str().unwrap().to_owned()
    }

    /// Stores `body` as a record of `kind` for the payment service; its id
    /// and token.
    async fn store(&self, kind: &str, body: Value) -> (String, String) {
        let reply = call(
            &self.app,
            "POST",
            &format!("/v1/records/{kind}"),
            Some(&self.payments),
            Some(body),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        (
            reply.body["id"].as_str().unwrap().to_owned(),
            reply.body["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn detokenize(&self, token: &str) -> Value {
        let reply = call(
            &self.app,
            "POST",
            "/v1/tokens/detokenize",
            Some(&self.payments),
            Some(json!({"tokens": [token]})),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["results"][token].clone()
    }

    fn live(&self, id: &str) -> bool {
        self.vault.state.vault.meta(id).unwrap().erased_at.is_none()
    }

    async fn hold(&self, who: &str, path: &str) -> Reply {
        call(&self.app, "POST", path, Some(who), Some(why())).await
    }
}

/// The audit entries of `action`.
fn entries(vault: &TestVault, action: &str) -> Vec<Value> {
    audit_entries(vault)
        .into_iter()
        .filter(|e| e["action"] == action)
        .collect()
}

/// GDPR art. 15: the officer gets every live record of the subject, masked,
/// with its tokens and their state; nobody else does; the access is
/// audited with reason and ticket (and each record shown as read), and
/// the subject_ref itself reaches neither the audit log nor the logs.
#[tokio::test]
async fn a_subject_access_shows_every_record_masked_and_is_audited() {
    let log = common::captured_log();
    let s = setup(RetentionSettings::default());
    let subject = "user-dsar-5519";
    let (card_id, card_token) = s.store("card", card(subject)).await;
    let (kyc_id, _) = s.store("kyc", kyc(subject)).await;
    let (other, _) = s.store("card", card("user-someone-else")).await;
    // A revoked token shows as revoked.
    let revoked = call(
        &s.app,
        "DELETE",
        &format!("/v1/tokens/{card_token}"),
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(revoked.status, 204);
    let officer = s.login("olivia").await;
    let path = format!("/v1/subjects/{subject}?{WHY}");
    let reply = call(&s.app, "GET", &path, Some(&officer), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["subject_ref"], subject);
    assert_eq!(reply.body["legal_hold"], false);
    let records = reply.body["records"].as_array().unwrap();
    let mut ids: Vec<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut expected = vec![card_id.as_str(), kyc_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "exactly the subject's records");
    let card_view = records
        .iter()
        .find(|r| r["id"] == card_id.as_str())
        .unwrap();
    assert_eq!(card_view["type"], "card");
    assert_eq!(card_view["masked"]["last4"], "4242");
    assert!(card_view["created_at"].as_str().unwrap().ends_with('Z'));
    let states: Vec<&str> = card_view["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"revoked") && states.contains(&"usable"),
        "{states:?}"
    );
    // Masked: no PAN, no email, no token.
    let text = reply.body.to_string();
    for secret in [PAN, "ada@example.org", card_token.as_str()] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    // Audited: one subject.read with reason and ticket, one record.read
    // per record shown, none for the other subject's record.
    let reads = entries(&s.vault, "subject.read");
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0]["ticket"], "DSAR-7");
    assert!(
        reads[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("GDPR art. 15 request")
    );
    assert!(reads[0]["target"].as_str().unwrap().starts_with("hmac:"));
    let record_reads: Vec<String> = entries(&s.vault, "record.read")
        .iter()
        .filter(|e| e["ticket"] == "DSAR-7")
        .map(|e| e["target"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(record_reads.len(), 2);
    assert!(!record_reads.contains(&other));

    // Reason and ticket are required; the subject is checked; unknown
    // parameters are refused; all as problem+json.
    for (path, status, code) in [
        (format!("/v1/subjects/{subject}"), 400, "reason_required"),
        (
            format!("/v1/subjects/{subject}?reason=x"),
            400,
            "reason_required",
        ),
        (
            format!("/v1/subjects/{subject}?reason=%20&ticket=T-1"),
            400,
            "reason_required",
        ),
        (
            format!("/v1/subjects/{}?{WHY}", "x".repeat(129)),
            422,
            "validation_failed",
        ),
        (
            format!("/v1/subjects/{subject}?{WHY}&all=true"),
            422,
            "validation_failed",
        ),
    ] {
        let reply = call(&s.app, "GET", &path, Some(&officer), None).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (status, Some(code)),
            "{path}"
        );
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "{path}"
        );
    }
    // Nobody else: not the admin, the approver, the owner service or the
    // auditor; each refusal audited, nothing shown.
    let auditor = s.vault.service("auditor", Role::Auditor);
    let approver = s.login("abel").await;
    for who in [&s.vault.admin_api_key, &approver, &s.payments, &auditor] {
        let reply = call(&s.app, "GET", &path, Some(who), None).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (403, Some("forbidden"))
        );
        assert!(!reply.body.to_string().contains(&card_id));
    }
    assert_eq!(
        entries(&s.vault, "subject.read")
            .iter()
            .filter(|e| e["outcome"] == "denied")
            .count(),
        4
    );
    // The subject_ref is in no audit entry and no log line.
    let audit = serde_json::to_string(&audit_entries(&s.vault)).unwrap();
    assert!(!audit.contains(subject));
    let logged = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(!logged.contains(subject));
}

/// GDPR art. 17: one request erases every record of the subject (and its
/// tokens answer `erased`), one `record.erase` entry each with the
/// ticket; the other subject's record stays; reason and ticket required.
#[tokio::test]
async fn a_subject_erasure_erases_every_record_with_one_entry_each() {
    let s = setup(RetentionSettings::default());
    let subject = "user-forget-me";
    let mut mine = Vec::new();
    for body in [card(subject), card(subject), kyc(subject)] {
        let kind = if body.get("pan").is_some() {
            "card"
        } else {
            "kyc"
        };
        mine.push(s.store(kind, body).await);
    }
    let (other, _) = s.store("card", card("user-stays")).await;
    let path = format!("/v1/subjects/{subject}");
    let admin = s.vault.admin_api_key.clone();
    for (body, status, code) in [
        (json!({"reason": "gone"}), 400, "reason_required"),
        (json!({"ticket": "DSR-1"}), 400, "reason_required"),
        (
            json!({"reason": "gone", "ticket": "DSR 1"}),
            422,
            "validation_failed",
        ),
        (
            json!({"reason": "gone", "ticket": "DSR-1", "all": true}),
            422,
            "validation_failed",
        ),
    ] {
        let reply = call(&s.app, "DELETE", &path, Some(&admin), Some(body.clone())).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let no_body = call(&s.app, "DELETE", &path, Some(&admin), None).await;
    assert_eq!(no_body.status, 400);
    assert!(
        mine.iter().all(|(id, _)| s.live(id)),
        "nothing erased by a refused request"
    );
    // Not the owner service, the approver or the auditor.
    let approver = s.login("abel").await;
    for who in [&s.payments, &approver] {
        let reply = call(&s.app, "DELETE", &path, Some(who), Some(why())).await;
        assert_eq!(reply.status, 403);
    }
    assert!(mine.iter().all(|(id, _)| s.live(id)));

    let reply = call(&s.app, "DELETE", &path, Some(&admin), Some(why())).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut erased: Vec<String> = reply.body["erased"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    erased.sort();
    let mut ids: Vec<String> = mine.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    assert_eq!(erased, ids);
    for (id, token) in &mine {
        assert!(!s.live(id));
        assert_eq!(s.detokenize(token).await["error"], "erased");
    }
    assert!(s.live(&other), "another subject's record is untouched");
    let erasures = entries(&s.vault, "record.erase");
    assert_eq!(erasures.len(), 3);
    for id in &ids {
        let entry: Vec<_> = erasures
            .iter()
            .filter(|e| e["target"] == id.as_str())
            .collect();
        assert_eq!(entry.len(), 1, "{id}");
        assert_eq!(entry[0]["ticket"], "DSR-42");
        assert_eq!(entry[0]["outcome"], "allowed");
    }
    // The officer may erase too; nothing is left, so nothing more is.
    let officer = s.login("olivia").await;
    let again = call(&s.app, "DELETE", &path, Some(&officer), Some(why())).await;
    assert_eq!(
        (again.status, again.body["code"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(entries(&s.vault, "record.erase").len(), 3);
    assert!(
        entries(&s.vault, "subject.erase")
            .iter()
            .any(|e| e["outcome"] == "no_match")
    );
    let view = call(
        &s.app,
        "GET",
        &format!("{path}?{WHY}"),
        Some(&officer),
        None,
    )
    .await;
    assert_eq!(
        (view.status, view.body["code"].as_str()),
        (404, Some("not_found"))
    );
    assert!(
        entries(&s.vault, "subject.read")
            .iter()
            .any(|e| e["outcome"] == "no_match" && e["ticket"] == "DSAR-7")
    );
}

/// 20 erasures of one subject at once: each record is erased once, with
/// exactly one audit entry; every request answers 200 (or 409 after
/// repeated conflicts), never a second erasure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_parallel_subject_erasures_erase_each_record_once() {
    let s = setup(RetentionSettings::default());
    let subject = "user-parallel";
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(s.store("card", card(subject)).await.0);
    }
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let app = s.app.clone();
            let admin = s.vault.admin_api_key.clone();
            tokio::spawn(async move {
                call(
                    &app,
                    "DELETE",
                    "/v1/subjects/user-parallel",
                    Some(&admin),
                    Some(why()),
                )
                .await
            })
        })
        .collect();
    let mut reported = Vec::new();
    for handle in handles {
        let reply = handle.await.unwrap();
        match reply.status {
            200 => reported.extend(
                reply.body["erased"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned()),
            ),
            // Another request erased them all first.
            404 => assert_eq!(reply.body["code"], "not_found"),
            409 => assert_eq!(reply.body["code"], "conflict"),
            other => panic!("{other}: {}", reply.body),
        }
    }
    reported.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        reported, expected,
        "each record reported erased by one request"
    );
    for id in &ids {
        assert!(!s.live(id));
        let count = entries(&s.vault, "record.erase")
            .iter()
            .filter(|e| e["target"] == id.as_str() && e["outcome"] == "allowed")
            .count();
        assert_eq!(count, 1, "{id}");
    }
}

/// A hold on a record stops its manual erasure, its subject's erasure (of
/// every record: nothing is erased) and the sweeper; once another
/// approver releases it, the sweeper erases it, as `system`, naming the
/// rule.
#[tokio::test]
async fn a_held_record_survives_manual_subject_and_scheduled_erasure() {
    let s = setup(rules(&[(RecordType::Card, "1d after created")]));
    let subject = "user-held";
    let (held, held_token) = s.store("card", card(subject)).await;
    let (free, _) = s.store("card", card(subject)).await;
    let officer = s.login("olivia").await;
    let placed = s.hold(&officer, &format!("/v1/records/{held}/hold")).await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    assert_eq!(placed.body["held"], true);
    // Held twice: a conflict, not a second hold.
    let twice = s.hold(&officer, &format!("/v1/records/{held}/hold")).await;
    assert_eq!(twice.status, 409);

    let manual = call(
        &s.app,
        "DELETE",
        &format!("/v1/records/{held}"),
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(
        (manual.status, manual.body["code"].as_str()),
        (409, Some("legal_hold"))
    );
    assert_eq!(manual.headers["content-type"], "application/problem+json");
    let by_subject = call(
        &s.app,
        "DELETE",
        &format!("/v1/subjects/{subject}"),
        Some(&s.vault.admin_api_key),
        Some(why()),
    )
    .await;
    assert_eq!(
        (by_subject.status, by_subject.body["code"].as_str()),
        (409, Some("legal_hold"))
    );
    assert!(
        s.live(&held) && s.live(&free),
        "a held subject erasure erases nothing"
    );
    let denied: Vec<_> = entries(&s.vault, "record.erase")
        .into_iter()
        .filter(|e| e["outcome"] == "denied")
        .collect();
    assert!(denied.iter().any(|e| e["target"] == held.as_str()));
    assert!(denied.iter().all(|e| e["target"] != free.as_str()));

    // Due two days later: the sweeper erases the free card, not the held.
    s.clock.advance(time::Duration::days(2));
    let report = sweeper::sweep(&s.vault.state).await.unwrap();
    assert_eq!((report.erased, report.held), (1, 1), "{report:?}");
    assert!(s.live(&held) && !s.live(&free));
    assert_eq!(s.detokenize(&held_token).await["view"], "masked");
    let again = sweeper::sweep(&s.vault.state).await.unwrap();
    assert_eq!((again.erased, again.held), (0, 1));

    // Released by an approver (not the officer who placed it)...
    let officer = s.login("olivia").await;
    let path = format!("/v1/records/{held}/hold/release");
    let refused = call(&s.app, "POST", &path, Some(&officer), Some(why())).await;
    assert_eq!(refused.status, 403);
    let approver = s.login("abel").await;
    let released = call(&s.app, "POST", &path, Some(&approver), Some(why())).await;
    assert_eq!(released.status, 200, "{}", released.body);
    // ...then the next sweep erases it, as `system`, naming the rule.
    let report = sweeper::sweep(&s.vault.state).await.unwrap();
    assert_eq!((report.erased, report.held), (1, 0));
    assert!(!s.live(&held));
    let entry = entries(&s.vault, "record.erase")
        .into_iter()
        .find(|e| e["target"] == held.as_str() && e["outcome"] == "allowed")
        .unwrap();
    assert_eq!(entry["actor"], "system");
    assert_eq!(entry["reason"], "retention: card: 1d after created");
    for action in ["hold.place", "hold.release"] {
        assert!(
            entries(&s.vault, action)
                .iter()
                .any(|e| e["outcome"] == "allowed" && e["ticket"] == "DSR-42"),
            "{action}"
        );
    }
}

/// A hold on a subject covers its records, present and future, against
/// every erasure; and generic values can be held too.
#[tokio::test]
async fn a_subject_hold_covers_its_records_and_generic_values_can_be_held() {
    let s = setup(rules(&[(RecordType::Card, "1d after created")]));
    let subject = "user-litigation";
    let (before, _) = s.store("card", card(subject)).await;
    let approver = s.login("abel").await;
    let placed = s
        .hold(&approver, &format!("/v1/subjects/{subject}/hold"))
        .await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    let (after, _) = s.store("card", card(subject)).await;
    for id in [&before, &after] {
        let reply = call(
            &s.app,
            "DELETE",
            &format!("/v1/records/{id}"),
            Some(&s.payments),
            None,
        )
        .await;
        assert_eq!(reply.body["code"], "legal_hold");
    }
    let officer = s.login("olivia").await;
    let view = call(
        &s.app,
        "GET",
        &format!("/v1/subjects/{subject}?{WHY}"),
        Some(&officer),
        None,
    )
    .await;
    assert_eq!(view.body["legal_hold"], true);
    s.clock.advance(time::Duration::days(3));
    let report = sweeper::sweep(&s.vault.state).await.unwrap();
    assert_eq!((report.erased, report.held), (0, 2));
    assert!(s.live(&before) && s.live(&after));

    // A generic value, held by its id (as the audit names it).
    let token = call(
        &s.app,
        "POST",
        "/v1/tokens",
        Some(&s.payments),
        Some(json!({"value": "IBAN memo 778", "kind": "generic"})),
    )
    .await
    .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let gen_id = entries(&s.vault, "token.create").last().unwrap()["target"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(gen_id.starts_with("gen_"));
    let officer = s.login("olivia").await;
    assert_eq!(
        s.hold(&officer, &format!("/v1/records/{gen_id}/hold"))
            .await
            .status,
        201
    );
    let erase = call(
        &s.app,
        "DELETE",
        &format!("/v1/tokens/{token}?erase=true"),
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(
        (erase.status, erase.body["code"].as_str()),
        (409, Some("legal_hold"))
    );
    assert_eq!(s.detokenize(&token).await["view"], "plain");
    // Unknown ids: 404, not a hold on nothing.
    let unknown = s
        .hold(&officer, "/v1/records/card_0123456789abcdef01234567/hold")
        .await;
    assert_eq!(unknown.status, 404);
}

/// Releasing needs a compliance approver other than whoever placed the
/// hold: the same approver gets 403 `four_eyes_required` (audited), an
/// officer 403 `forbidden`, another approver releases it; once released
/// there is nothing to release.
#[tokio::test]
async fn a_hold_is_released_by_another_approver_only() {
    let s = setup(RetentionSettings::default());
    let subject = "user-four-eyes";
    let (id, _) = s.store("kyc", kyc(subject)).await;
    let abel = s.login("abel").await;
    let abby = s.login("abby").await;
    let officer = s.login("olivia").await;
    for (hold, release) in [
        (
            format!("/v1/records/{id}/hold"),
            format!("/v1/records/{id}/hold/release"),
        ),
        (
            format!("/v1/subjects/{subject}/hold"),
            format!("/v1/subjects/{subject}/hold/release"),
        ),
    ] {
        assert_eq!(s.hold(&abel, &hold).await.status, 201);
        let own = call(&s.app, "POST", &release, Some(&abel), Some(why())).await;
        assert_eq!(
            (own.status, own.body["code"].as_str()),
            (403, Some("four_eyes_required")),
            "{release}"
        );
        let by_officer = call(&s.app, "POST", &release, Some(&officer), Some(why())).await;
        assert_eq!(by_officer.body["code"], "forbidden");
        let no_reason = call(&s.app, "POST", &release, Some(&abby), Some(json!({}))).await;
        assert_eq!(no_reason.body["code"], "reason_required");
        let other = call(&s.app, "POST", &release, Some(&abby), Some(why())).await;
        assert_eq!(other.status, 200, "{}", other.body);
        assert_eq!(other.body["held"], false);
        let gone = call(&s.app, "POST", &release, Some(&abby), Some(why())).await;
        assert_eq!(gone.status, 404);
    }
    let refusals = entries(&s.vault, "hold.release")
        .into_iter()
        .filter(|e| {
            e["outcome"] == "denied"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.ends_with("own hold"))
        })
        .count();
    assert_eq!(refusals, 2);
    // Released: the record may be erased again.
    let erase = call(
        &s.app,
        "DELETE",
        &format!("/v1/records/{id}"),
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(erase.status, 204);
    // A hold on an erased record is too late.
    let late = s.hold(&officer, &format!("/v1/records/{id}/hold")).await;
    assert_eq!(
        (late.status, late.body["code"].as_str()),
        (410, Some("erased"))
    );
    // Only compliance staff place holds.
    for who in [&s.payments, &s.vault.admin_api_key] {
        let reply = s.hold(who, &format!("/v1/subjects/{subject}/hold")).await;
        assert_eq!(reply.status, 403);
    }
}

/// A hold and an erasure of one record at once: either the hold is
/// placed and the record lives, or the record is erased and the hold is
/// refused. Never a hold on an erased record, never an erasure past a
/// hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_racing_an_erasure_is_never_lost() {
    let s = setup(RetentionSettings::default());
    let officer = s.login("olivia").await;
    let (mut holds, mut erasures) = (0, 0);
    for round in 0..12 {
        let (id, _) = s.store("card", card(&format!("user-race-{round}"))).await;
        let hold = {
            let app = s.app.clone();
            let officer = officer.clone();
            let path = format!("/v1/records/{id}/hold");
            tokio::spawn(
                async move { call(&app, "POST", &path, Some(&officer), Some(why())).await },
            )
        };
        let erase = {
            let app = s.app.clone();
            let payments = s.payments.clone();
            let path = format!("/v1/records/{id}");
            tokio::spawn(async move { call(&app, "DELETE", &path, Some(&payments), None).await })
        };
        let (hold, erase) = (hold.await.unwrap(), erase.await.unwrap());
        let held = s
            .vault
            .state
            .lifecycle
            .hold(&strongroom::lifecycle::HoldTarget::Record(id.clone()))
            .unwrap()
            .is_some();
        match (hold.status, erase.status) {
            (201, 409) => {
                assert!(["legal_hold", "conflict"].contains(&erase.body["code"].as_str().unwrap()));
                assert!(s.live(&id) && held);
                holds += 1;
            }
            (409 | 410, 204) => {
                assert!(!s.live(&id) && !held);
                erasures += 1;
            }
            other => panic!("round {round}: {other:?} {} {}", hold.body, erase.body),
        }
    }
    assert_eq!(holds + erasures, 12);
}

/// A use whose last-use write did not commit (a conflict, a store that
/// failed) leaves the next use to write it: what the node remembers as
/// written today comes from the store only, or a card's last use could be
/// lost and the card erased early (third review, M2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_use_write_that_did_not_commit_is_written_again() {
    let s = setup(RetentionSettings::default());
    let (card_id, _) = s.store("card", card("user-lu")).await;
    let lifecycle = &s.vault.state.lifecycle;
    // This write is dropped, as a commit that fails drops it.
    assert!(!lifecycle.note_use(&card_id).unwrap().is_empty());
    let again = lifecycle.note_use(&card_id).unwrap();
    assert!(!again.is_empty(), "an uncommitted write was taken as done");
    s.vault.store.commit(again).unwrap();
    // Written today: nothing more today, on this node.
    assert!(lifecycle.note_use(&card_id).unwrap().is_empty());
    assert!(lifecycle.note_use(&card_id).unwrap().is_empty());
    s.clock.advance(time::Duration::days(1));
    assert!(!lifecycle.note_use(&card_id).unwrap().is_empty());
}

/// Retention by a manual clock: a card is erased 400 days after its last
/// use (a detokenize moves it on; the sweeper does nothing before), a KYC
/// record 5 years after its owner closed the relationship (never while
/// it lasts), and idempotency slots older than 24 hours go; the sweeper
/// task does all this on its own once the clock moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_erases_what_is_due_by_the_clock() {
    let s = setup(rules(&[
        (RecordType::Card, "400d after last_use"),
        (RecordType::Kyc, "5y after close"),
    ]));
    let (card_id, token) = s.store("card", card("user-ret")).await;
    let (kyc_id, _) = s.store("kyc", kyc("user-ret")).await;
    let (bank, _) = s
        .store(
            "bank_account",
            json!({"iban": "DE89 3704 0044 0532 0130 00", "holder_name": "Ada", "subject_ref": "user-ret"}),
        )
        .await;
    let slot = call_with(
        &s.app,
        "POST",
        "/v1/tokens",
        Some(&s.payments),
        Some(json!({"value": "v", "kind": "generic"})),
        &[("idempotency-key", "k-1")],
    )
    .await;
    assert_eq!(slot.status, 201);
    let slots = || s.vault.store.scan_prefix(b"idem/").unwrap().len();
    assert_eq!(slots(), 1);

    s.clock.advance(time::Duration::days(300));
    assert_eq!(s.detokenize(&token).await["view"], "masked");
    s.clock.advance(time::Duration::days(150));
    // 450 days after creation, 150 after the last use: not due.
    let report = sweeper::sweep(&s.vault.state).await.unwrap();
    assert_eq!(report.erased, 0);
    assert_eq!(report.expired_slots, 1);
    assert_eq!(slots(), 0);
    assert!(s.live(&card_id) && s.live(&kyc_id) && s.live(&bank));

    // Closed now; the card due in 250 days; the sweeper task takes over.
    let closed = call(
        &s.app,
        "POST",
        "/v1/subjects/user-ret/close",
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    let task = sweeper::spawn(s.vault.state.clone());
    s.clock.advance(time::Duration::days(251));
    common::wait_until("the card's erasure", || !s.live(&card_id));
    assert!(s.live(&kyc_id), "5 years after close is not yet");
    s.clock.advance(time::Duration::days(5 * 365));
    common::wait_until("the KYC record's erasure", || !s.live(&kyc_id));
    task.abort();
    assert!(s.live(&bank), "no rule for bank accounts: kept");
    let reasons: Vec<String> = entries(&s.vault, "record.erase")
        .iter()
        .map(|e| format!("{} {}", e["actor"], e["reason"]))
        .collect();
    assert!(
        reasons.contains(&"\"system\" \"retention: card: 400d after last_use\"".to_owned()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"\"system\" \"retention: kyc: 5y after close\"".to_owned()),
        "{reasons:?}"
    );
    assert_eq!(s.detokenize(&token).await["error"], "erased");
}

/// Two nodes' sweepers over one store at once: every due record is erased
/// once, with one audit entry, and neither sweep fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sweepers_erase_each_record_once() {
    let s = setup(rules(&[(RecordType::Card, "1d after created")]));
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(s.store("card", card(&format!("user-two-{i}"))).await.0);
    }
    let other = AppState::new(
        Arc::clone(&s.vault.keyring),
        Arc::clone(&s.vault.store),
        s.clock.clone(),
        AppSettings {
            retention: rules(&[(RecordType::Card, "1d after created")]),
            ..test_settings()
        },
    );
    s.clock.advance(time::Duration::days(2));
    let (a, b) = tokio::join!(
        tokio::spawn({
            let state = s.vault.state.clone();
            async move { sweeper::sweep(&state).await }
        }),
        tokio::spawn(async move { sweeper::sweep(&other).await })
    );
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_eq!(a.erased + b.erased, ids.len(), "{a:?} {b:?}");
    for id in &ids {
        assert!(!s.live(id));
        let count = entries(&s.vault, "record.erase")
            .iter()
            .filter(|e| e["target"] == id.as_str())
            .count();
        assert_eq!(count, 1, "{id}");
    }
}

/// Closing a relationship: the payment service only, the first time
/// stands until the customer comes back, a bad subject is 422.
#[tokio::test]
async fn closing_a_relationship_keeps_the_first_time() {
    let s = setup(RetentionSettings::default());
    let close = |who: String| {
        let app = s.app.clone();
        async move {
            call(
                &app,
                "POST",
                "/v1/subjects/user-close/close",
                Some(&who),
                None,
            )
            .await
        }
    };
    let first = close(s.payments.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    s.clock.advance(time::Duration::days(1));
    let second = close(s.payments.clone()).await;
    assert_eq!(second.body["closed_at"], first.body["closed_at"]);
    // The customer comes back (a record made after the close) and leaves
    // again: the next close replaces the first and then stands (third
    // review, L3: a reopen was never tested; what is due by which close
    // is the unit test `due_times_follow_their_anchor`).
    s.clock.advance(time::Duration::days(1));
    s.store("card", card("user-close")).await;
    s.clock.advance(time::Duration::days(1));
    let third = close(s.payments.clone()).await;
    assert_eq!(third.status, 200, "{}", third.body);
    assert_ne!(third.body["closed_at"], first.body["closed_at"]);
    let fourth = close(s.payments.clone()).await;
    assert_eq!(fourth.body["closed_at"], third.body["closed_at"]);
    let officer = s.login("olivia").await;
    for who in [s.vault.admin_api_key.clone(), officer] {
        assert_eq!(close(who).await.status, 403);
    }
    let bad = call(
        &s.app,
        "POST",
        "/v1/subjects/a%20b/close",
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(
        (bad.status, bad.body["code"].as_str()),
        (422, Some("validation_failed"))
    );
    let closes = entries(&s.vault, "subject.close");
    assert!(
        closes
            .iter()
            .all(|e| e["target"].as_str().is_none_or(|t| t.starts_with("hmac:")))
    );
}

/// `DELETE /v1/tokens/{token}?erase=true`: the owner (or an admin) erases
/// a generic value: its sealed value is gone from the store, the token
/// answers `erased` (410; per token in detokenize). Without it, a revoke
/// as before; a record's token cannot be erased this way; another owner's
/// is 404.
#[tokio::test]
async fn generic_values_are_erasable() {
    let s = setup(RetentionSettings::default());
    let tokenize = |value: &'static str| {
        let app = s.app.clone();
        let payments = s.payments.clone();
        async move {
            call(
                &app,
                "POST",
                "/v1/tokens",
                Some(&payments),
                Some(json!({"value": value, "kind": "generic"})),
            )
            .await
            .body["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let sealed_values = || s.vault.store.scan_prefix(b"gen/").unwrap().len();
    let token = tokenize("memo one").await;
    let revoked = tokenize("memo two").await;
    let by_admin = tokenize("memo three").await;
    assert_eq!(sealed_values(), 3);
    let other = s.vault.service("payments-2", Role::PaymentService);
    let path = format!("/v1/tokens/{token}?erase=true");
    let foreign = call(&s.app, "DELETE", &path, Some(&other), None).await;
    assert_eq!(foreign.status, 404);
    let officer = s.login("olivia").await;
    assert_eq!(
        call(&s.app, "DELETE", &path, Some(&officer), None)
            .await
            .status,
        403
    );
    let odd = call(
        &s.app,
        "DELETE",
        &format!("/v1/tokens/{token}?erase=maybe"),
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(
        (odd.status, odd.body["code"].as_str()),
        (422, Some("validation_failed"))
    );
    assert_eq!(sealed_values(), 3, "nothing erased by refused requests");

    assert_eq!(
        call(&s.app, "DELETE", &path, Some(&s.payments), None)
            .await
            .status,
        204
    );
    assert_eq!(sealed_values(), 2);
    assert_eq!(s.detokenize(&token).await["error"], "erased");
    let again = call(&s.app, "DELETE", &path, Some(&s.payments), None).await;
    assert_eq!(
        (again.status, again.body["code"].as_str()),
        (410, Some("erased"))
    );
    let revoke_erased = call(
        &s.app,
        "DELETE",
        &format!("/v1/tokens/{token}"),
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(revoke_erased.status, 410);
    // Without erase: a revoke, the value kept.
    let plain = call(
        &s.app,
        "DELETE",
        &format!("/v1/tokens/{revoked}?erase=false"),
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(plain.status, 204);
    assert_eq!(s.detokenize(&revoked).await["error"], "token_revoked");
    assert_eq!(sealed_values(), 2);
    // An admin may erase.
    let admin = call(
        &s.app,
        "DELETE",
        &format!("/v1/tokens/{by_admin}?erase=true"),
        Some(&s.vault.admin_api_key),
        None,
    )
    .await;
    assert_eq!(admin.status, 204);
    assert_eq!(sealed_values(), 1);
    // A record's token: erase the record instead.
    let (card_id, card_token) = s.store("card", card("user-gen")).await;
    let record = call(
        &s.app,
        "DELETE",
        &format!("/v1/tokens/{card_token}?erase=true"),
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(
        (record.status, record.body["errors"][0]["field"].as_str()),
        (422, Some("erase"))
    );
    assert!(s.live(&card_id));
    let erased = entries(&s.vault, "token.erase");
    assert_eq!(
        erased.iter().filter(|e| e["outcome"] == "allowed").count(),
        2
    );
}

/// The OpenAPI document declares the new routes with their inputs: the
/// subject's shape, reason and ticket required, `erase` on revoke, and
/// `legal_hold` among the erasures' answers.
#[test]
fn the_document_declares_subjects_and_holds() {
    let doc = serde_json::to_value(strongroom::api::openapi_document()).unwrap();
    let paths = &doc["paths"];
    let read = &paths["/v1/subjects/{subject_ref}"]["get"];
    let params = read["parameters"].as_array().unwrap();
    let param = |name: &str| params.iter().find(|p| p["name"] == name).unwrap().clone();
    assert_eq!(param("subject_ref")["schema"]["pattern"], "^[!-~]{1,128}$");
    for name in ["reason", "ticket"] {
        assert_eq!(param(name)["in"], "query", "{name}");
        assert_eq!(param(name)["required"], true, "{name}");
    }
    for (path, method) in [
        ("/v1/subjects/{subject_ref}", "delete"),
        ("/v1/subjects/{subject_ref}/close", "post"),
        ("/v1/subjects/{subject_ref}/hold", "post"),
        ("/v1/subjects/{subject_ref}/hold/release", "post"),
        ("/v1/records/{id}/hold", "post"),
        ("/v1/records/{id}/hold/release", "post"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path}");
    }
    for (path, method) in [
        ("/v1/subjects/{subject_ref}", "delete"),
        ("/v1/records/{id}", "delete"),
        ("/v1/tokens/{token}", "delete"),
    ] {
        let conflict = paths[path][method]["responses"]["409"]["description"]
            .as_str()
            .unwrap();
        assert!(conflict.contains("legal_hold"), "{method} {path}");
    }
    let revoke = paths["/v1/tokens/{token}"]["delete"]["parameters"]
        .as_array()
        .unwrap();
    assert!(
        revoke
            .iter()
            .any(|p| p["name"] == "erase" && p["in"] == "query")
    );
    let release = paths["/v1/records/{id}/hold/release"]["post"]["responses"]["403"]["description"]
        .as_str()
        .unwrap();
    assert!(release.contains("four_eyes_required"));
}

/// A record stored before the subject index (the earlier format: JSON
/// metadata, body under `rec/<id>/body`, no `bi/subject_ref/` entry) is
/// not found by subject until the sweeper indexes it (audited as
/// `record.index`, actor `system`); then it is, and opens as before. A
/// PATCH that changes a record's subject moves its index entry.
#[tokio::test]
async fn older_records_are_indexed_by_the_sweeper_and_a_patch_moves_the_entry() {
    let s = setup(RetentionSettings::default());
    let subject = "user-before-index";
    let (id, _) = s.store("card", card(subject)).await;
    // Rewrite it as a record of the earlier format, without the entry.
    let mut meta = s.vault.state.vault.meta(&id).unwrap();
    let body = s.vault.state.vault.sealed_body(&meta).unwrap().unwrap();
    let entry = meta
        .index_keys
        .iter()
        .position(|k| k.starts_with("bi/subject_ref/"))
        .unwrap();
    let entry = meta.index_keys.remove(entry);
    let key = format!("rec/{id}");
    let legacy = s
        .vault
        .keyring
        .keys()
        .unwrap()
        .state_key()
        .unwrap()
        .seal_json(key.as_bytes(), &meta)
        .unwrap();
    s.vault
        .store
        .commit(
            strongroom::store::Transaction::new()
                .put(key.as_bytes(), legacy)
                .put(format!("{key}/body").as_bytes(), body)
                .delete(entry.as_bytes()),
        )
        .unwrap();
    let officer = s.login("olivia").await;
    let path = format!("/v1/subjects/{subject}?{WHY}");
    let before = call(&s.app, "GET", &path, Some(&officer), None).await;
    assert_eq!(before.status, 404, "not indexed yet");

    let report = sweeper::sweep(&s.vault.state).await.unwrap();
    assert_eq!(report.indexed, 1);
    let indexed = entries(&s.vault, "record.index");
    assert_eq!(indexed.len(), 1);
    assert_eq!(
        (indexed[0]["actor"].as_str(), indexed[0]["target"].as_str()),
        (Some("system"), Some(id.as_str()))
    );
    let after = call(&s.app, "GET", &path, Some(&officer), None).await;
    assert_eq!(after.body["records"][0]["id"], id.as_str());
    assert_eq!(after.body["records"][0]["masked"]["last4"], "4242");
    assert_eq!(
        sweeper::sweep(&s.vault.state).await.unwrap().indexed,
        0,
        "once"
    );

    // A new subject: found under it, no longer under the old one.
    let patched = call(
        &s.app,
        "PATCH",
        &format!("/v1/records/{id}"),
        Some(&s.payments),
        Some(json!({"subject_ref": "user-renamed"})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let old = call(&s.app, "GET", &path, Some(&officer), None).await;
    assert_eq!(old.status, 404);
    let new = call(
        &s.app,
        "GET",
        &format!("/v1/subjects/user-renamed?{WHY}"),
        Some(&officer),
        None,
    )
    .await;
    assert_eq!(new.body["records"][0]["id"], id.as_str());
}

/// Holds are authenticated with the state key, bound to their store key:
/// one edited on disk (say, to name the releasing approver as the one who
/// placed it), or copied to another record, is an integrity error, and
/// the erasure it guards does not happen.
#[tokio::test]
async fn a_hold_edited_or_moved_on_disk_is_an_integrity_error() {
    let s = setup(RetentionSettings::default());
    let (held, _) = s.store("card", card("user-tamper")).await;
    let (other, _) = s.store("card", card("user-tamper-2")).await;
    let officer = s.login("olivia").await;
    assert_eq!(
        s.hold(&officer, &format!("/v1/records/{held}/hold"))
            .await
            .status,
        201
    );
    let key = format!("hold/rec/{held}");
    let stored = s.vault.store.get(key.as_bytes()).unwrap().unwrap();
    // Moved: the same bytes under another record's hold.
    s.vault
        .store
        .put(format!("hold/rec/{other}").as_bytes(), &stored)
        .unwrap();
    let moved = call(
        &s.app,
        "DELETE",
        &format!("/v1/records/{other}"),
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(
        (moved.status, moved.body["code"].as_str()),
        (500, Some("integrity_error"))
    );
    assert!(s.live(&other));
    // Edited: the placing officer's id replaced.
    let abel = s.login("abel").await;
    let officer_id = s.vault.principal_id("olivia");
    let abel_id = s.vault.principal_id("abel");
    let text = String::from_utf8_lossy(&stored).replace(&officer_id, &abel_id);
    s.vault.store.put(key.as_bytes(), text.as_bytes()).unwrap();
    let release = call(
        &s.app,
        "POST",
        &format!("/v1/records/{held}/hold/release"),
        Some(&abel),
        Some(why()),
    )
    .await;
    assert_eq!(release.body["code"], "integrity_error");
    let erase = call(
        &s.app,
        "DELETE",
        &format!("/v1/records/{held}"),
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(erase.status, 500);
    assert!(s.live(&held));
}

/// A sealed vault is not swept: a pass needs the keys (to read holds,
/// closes and records) and stops with `sealed`, erasing nothing; the task
/// only starts passes while unsealed.
#[tokio::test]
async fn nothing_is_swept_while_sealed() {
    let s = setup(rules(&[(RecordType::Card, "1d after created")]));
    let (id, _) = s.store("card", card("user-sealed")).await;
    s.clock.advance(time::Duration::days(2));
    s.vault.keyring.seal();
    let refused = sweeper::sweep(&s.vault.state).await.unwrap_err();
    assert_eq!(refused, strongroom::api::ApiError::Sealed);
    s.vault
        .keyring
        .unseal(strongroom::keyring::UnsealInput::Passphrase(
            Zeroizing::new(common::PASSPHRASE.into()),
        ))
        .unwrap();
    assert!(s.live(&id));
    assert_eq!(sweeper::sweep(&s.vault.state).await.unwrap().erased, 1);
    assert!(!s.live(&id));
}

/// A change of a held record is refused too (second review, H1): a PATCH
/// could overwrite its values, or move it out of a held subject and then
/// erase it. Nothing changes, the refusal is audited, and after the
/// release the change goes through.
#[tokio::test]
async fn a_held_record_cannot_be_changed_or_moved_out_of_its_subject() {
    let s = setup(rules(&[]));
    let subject = "user-frozen";
    let (id, _) = s.store("card", card(subject)).await;
    let officer = s.login("olivia").await;
    let placed = s
        .hold(&officer, &format!("/v1/subjects/{subject}/hold"))
        .await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    for patch in [
        json!({"subject_ref": null}),
        json!({"subject_ref": "user-elsewhere"}),
        json!({"exp_month": 1}),
    ] {
        let changed = call(
            &s.app,
            "PATCH",
            &format!("/v1/records/{id}"),
            Some(&s.payments),
            Some(patch.clone()),
        )
        .await;
        assert_eq!(
            (changed.status, changed.body["code"].as_str()),
            (409, Some("legal_hold")),
            "{patch}: {}",
            changed.body
        );
    }
    let meta = s.vault.state.vault.meta(&id).unwrap();
    assert_eq!(
        (meta.version, meta.subject_ref.as_deref()),
        (1, Some(subject))
    );
    let erased = call(
        &s.app,
        "DELETE",
        &format!("/v1/records/{id}"),
        Some(&s.payments),
        None,
    )
    .await;
    assert_eq!(erased.status, 409);
    assert!(
        entries(&s.vault, "record.update")
            .iter()
            .filter(|e| e["outcome"] == "denied")
            .count()
            >= 3
    );
    let approver = s.login("abel").await;
    let released = call(
        &s.app,
        "POST",
        &format!("/v1/subjects/{subject}/hold/release"),
        Some(&approver),
        Some(why()),
    )
    .await;
    assert_eq!(released.status, 200, "{}", released.body);
    let changed = call(
        &s.app,
        "PATCH",
        &format!("/v1/records/{id}"),
        Some(&s.payments),
        Some(json!({"exp_month": 1})),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
}
