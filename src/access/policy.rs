//! The one table of operation × role. Deny by default: an operation a role
//! is not listed for is forbidden. docs/access-control.md prints this table.

use serde::{Deserialize, Serialize};

use super::PrincipalKind;
use crate::records::RecordType;

/// Built-in roles (API.md "Principals and sessions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    PaymentService,
    ComplianceOfficer,
    ComplianceApprover,
    Auditor,
    /// A publishable key's one role: create cards and attach CVCs for its
    /// owner service.
    Collector,
    /// A scraper (Prometheus): reads `GET /v1/sys/metrics` and nothing
    /// else.
    Metrics,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Admin,
        Role::PaymentService,
        Role::ComplianceOfficer,
        Role::ComplianceApprover,
        Role::Auditor,
        Role::Collector,
        Role::Metrics,
    ];

    /// The role's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::PaymentService => "payment_service",
            Role::ComplianceOfficer => "compliance_officer",
            Role::ComplianceApprover => "compliance_approver",
            Role::Auditor => "auditor",
            Role::Collector => "collector",
            Role::Metrics => "metrics",
        }
    }

    /// Whether a principal of `kind` may hold this role: the payment
    /// service and a metrics scraper are machines; compliance staff are
    /// people; a publishable key is a collector and nothing else.
    pub fn fits(self, kind: PrincipalKind) -> bool {
        if kind == PrincipalKind::Publishable || self == Role::Collector {
            return kind == PrincipalKind::Publishable && self == Role::Collector;
        }
        match self {
            Role::Collector => false,
            Role::PaymentService | Role::Metrics => kind == PrincipalKind::Service,
            Role::ComplianceOfficer | Role::ComplianceApprover => kind == PrincipalKind::Staff,
            Role::Admin | Role::Auditor => true,
        }
    }
}

/// Operations that need a role. Public operations (health, unseal, the
/// OpenAPI document, login) and logout (any session may end itself) are not
/// listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    SysSeal,
    SysBackup,
    SysMetrics,
    PrincipalCreate,
    PrincipalList,
    PrincipalDisable,
    AuditRead,
    AuditVerify,
    KeysRead,
    KeysRotate,
    KeysRewrap,
    KeysDestroy,
    /// `POST /v1/canaries`: canary records for a payment service.
    CanaryCreate,
    RecordCreate(RecordType),
    RecordRead,
    RecordUpdate,
    RecordErase,
    RecordReveal,
    RecordSearch,
    AccessRequestCreate,
    AccessRequestList,
    AccessRequestApprove,
    AccessRequestDeny,
    TokenCreate,
    TokenDetokenize,
    TokenRevoke,
    CvcAttach,
    RelayRouteCreate,
    RelayRouteChange,
    RelayRouteApprove,
    RelayRouteList,
    RelayRouteDelete,
    RelayInvoke,
    /// `GET /v1/subjects/{ref}`: every record and token of a subject.
    SubjectRead,
    /// `DELETE /v1/subjects/{ref}`: erase every record of a subject.
    SubjectErase,
    /// `POST /v1/subjects/{ref}/close`: the relationship ended.
    SubjectClose,
    /// Place a legal hold on a record or a subject.
    HoldPlace,
    /// Release a legal hold (another person than who placed it).
    HoldRelease,
    /// `DELETE /v1/tokens/{token}?erase=true`: erase a generic value.
    TokenErase,
}

impl Operation {
    pub const ALL: [Operation; 41] = [
        Operation::SysSeal,
        Operation::SysBackup,
        Operation::SysMetrics,
        Operation::PrincipalCreate,
        Operation::PrincipalList,
        Operation::PrincipalDisable,
        Operation::AuditRead,
        Operation::AuditVerify,
        Operation::KeysRead,
        Operation::KeysRotate,
        Operation::KeysRewrap,
        Operation::KeysDestroy,
        Operation::CanaryCreate,
        Operation::RecordCreate(RecordType::Card),
        Operation::RecordCreate(RecordType::BankAccount),
        Operation::RecordCreate(RecordType::Kyc),
        Operation::RecordRead,
        Operation::RecordUpdate,
        Operation::RecordErase,
        Operation::RecordReveal,
        Operation::RecordSearch,
        Operation::AccessRequestCreate,
        Operation::AccessRequestList,
        Operation::AccessRequestApprove,
        Operation::AccessRequestDeny,
        Operation::TokenCreate,
        Operation::TokenDetokenize,
        Operation::TokenRevoke,
        Operation::CvcAttach,
        Operation::RelayRouteCreate,
        Operation::RelayRouteChange,
        Operation::RelayRouteApprove,
        Operation::RelayRouteList,
        Operation::RelayRouteDelete,
        Operation::RelayInvoke,
        Operation::SubjectRead,
        Operation::SubjectErase,
        Operation::SubjectClose,
        Operation::HoldPlace,
        Operation::HoldRelease,
        Operation::TokenErase,
    ];

    /// The audit action recorded for this operation.
    pub fn action(self) -> &'static str {
        match self {
            Operation::SysSeal => "sys.seal",
            Operation::SysBackup => "sys.backup",
            Operation::SysMetrics => "sys.metrics",
            Operation::PrincipalCreate => "principal.create",
            Operation::PrincipalList => "principal.list",
            Operation::PrincipalDisable => "principal.disable",
            Operation::AuditRead => "audit.read",
            Operation::AuditVerify => "audit.verify",
            Operation::KeysRead => "key.read",
            Operation::KeysRotate => "key.rotate",
            Operation::KeysRewrap => "key.rewrap",
            Operation::KeysDestroy => "key.destroy",
            Operation::CanaryCreate => "canary.create",
            Operation::RecordCreate(_) => "record.create",
            Operation::RecordRead => "record.read",
            Operation::RecordUpdate => "record.update",
            Operation::RecordErase => "record.erase",
            Operation::RecordReveal => "record.reveal",
            Operation::RecordSearch => "record.search",
            Operation::AccessRequestCreate => "access.request",
            Operation::AccessRequestList => "access.list",
            Operation::AccessRequestApprove => "access.approve",
            Operation::AccessRequestDeny => "access.deny",
            Operation::TokenCreate => "token.create",
            Operation::TokenDetokenize => "token.detokenize",
            Operation::TokenRevoke => "token.revoke",
            Operation::CvcAttach => "card.cvc_attached",
            Operation::RelayRouteCreate => "relay.route.create",
            Operation::RelayRouteChange => "relay.route.change",
            Operation::RelayRouteApprove => "relay.route.approve",
            Operation::RelayRouteList => "relay.route.list",
            Operation::RelayRouteDelete => "relay.route.delete",
            Operation::RelayInvoke => "relay.invoke",
            Operation::SubjectRead => "subject.read",
            Operation::SubjectErase => "subject.erase",
            Operation::SubjectClose => "subject.close",
            Operation::HoldPlace => "hold.place",
            Operation::HoldRelease => "hold.release",
            Operation::TokenErase => "token.erase",
        }
    }
}

/// Whether `role` may perform `op`. The whole policy.
pub fn allows(role: Role, op: Operation) -> bool {
    use Operation as O;
    use Role as R;
    match op {
        O::SysSeal
        | O::SysBackup
        | O::PrincipalCreate
        | O::PrincipalList
        | O::PrincipalDisable
        | O::KeysRead
        | O::KeysRotate
        | O::KeysRewrap
        | O::KeysDestroy => role == R::Admin,
        // Canaries are planted by admins: the owning service must not
        // know which of its records are canaries.
        O::CanaryCreate => role == R::Admin,
        O::AuditRead | O::AuditVerify => matches!(role, R::Auditor | R::Admin),
        // Counts and timings by route template: no record data, no names.
        O::SysMetrics => matches!(role, R::Admin | R::Metrics),
        // A publishable key may do exactly these two: create a card and
        // attach its CVC (for its owner service).
        O::RecordCreate(RecordType::Card) | O::CvcAttach => {
            matches!(role, R::PaymentService | R::Collector)
        }
        O::RecordCreate(RecordType::BankAccount) | O::TokenCreate => role == R::PaymentService,
        O::RecordCreate(RecordType::Kyc) | O::RecordUpdate => {
            matches!(role, R::PaymentService | R::ComplianceOfficer)
        }
        O::RecordRead | O::TokenDetokenize => {
            matches!(
                role,
                R::PaymentService | R::ComplianceOfficer | R::ComplianceApprover
            )
        }
        O::RecordErase | O::TokenRevoke | O::TokenErase => {
            matches!(role, R::PaymentService | R::Admin)
        }
        O::RecordReveal | O::RecordSearch | O::AccessRequestCreate => role == R::ComplianceOfficer,
        // The approvers' queue: pending requests with their reasons and
        // tickets, no record data.
        O::AccessRequestList | O::AccessRequestApprove | O::AccessRequestDeny => {
            role == R::ComplianceApprover
        }
        // Where card data may go is decided by admins (two of them: the
        // approver must be another admin, checked by the handler); the
        // route list holds no record data, so auditors may read it.
        O::RelayRouteCreate | O::RelayRouteChange | O::RelayRouteApprove | O::RelayRouteDelete => {
            role == R::Admin
        }
        O::RelayRouteList => matches!(role, R::Admin | R::Auditor),
        O::RelayInvoke => role == R::PaymentService,
        // A data-subject access request finds records by subject, as a
        // search does: the officer who searches and reveals, with reason
        // and ticket. Admins erase but never read.
        O::SubjectRead => role == R::ComplianceOfficer,
        O::SubjectErase => matches!(role, R::Admin | R::ComplianceOfficer),
        // The payment system knows when a customer relationship ends.
        O::SubjectClose => role == R::PaymentService,
        // Compliance staff place holds (an approver too: a legal lead);
        // only an approver releases one, never the one who placed it
        // (checked by the handler).
        O::HoldPlace => matches!(role, R::ComplianceOfficer | R::ComplianceApprover),
        O::HoldRelease => role == R::ComplianceApprover,
    }
}

/// Why one principal may not hold all of `roles`, if it may not: each of
/// these roles checks or is checked by another, and one principal holding
/// both would defeat the design (docs/access-control.md, "Separation of
/// duties"). An admin may also be an auditor; every other role stands
/// alone.
pub fn separation_of_duties(roles: &[Role]) -> Option<&'static str> {
    let has = |role: Role| roles.contains(&role);
    if has(Role::ComplianceOfficer) && has(Role::ComplianceApprover) {
        return Some("compliance_officer and compliance_approver are held by different people");
    }
    if has(Role::PaymentService) && roles.iter().any(|r| *r != Role::PaymentService) {
        return Some(
            "payment_service stands alone: with any other role it would see every owner's records or the audit log",
        );
    }
    if has(Role::Collector) && roles.iter().any(|r| *r != Role::Collector) {
        return Some("collector stands alone: it is the one role of a publishable key");
    }
    if has(Role::Metrics) && roles.iter().any(|r| *r != Role::Metrics) {
        return Some(
            "metrics stands alone: its key sits in a scraper's configuration and must open nothing else",
        );
    }
    let compliance = has(Role::ComplianceOfficer) || has(Role::ComplianceApprover);
    if compliance && (has(Role::Admin) || has(Role::Auditor)) {
        return Some(
            "compliance roles stand apart from admin (who creates principals) and auditor (who checks them)",
        );
    }
    None
}

/// Whether `roles` see every record and token, not only their own: the
/// compliance roles (and admins, for erasure and revocation).
pub fn sees_all(roles: &[Role]) -> bool {
    roles.iter().any(|r| {
        matches!(
            r,
            Role::ComplianceOfficer | Role::ComplianceApprover | Role::Admin
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_record_data_operation_for_auditors_and_no_reveal_for_services() {
        for op in Operation::ALL {
            if !matches!(
                op,
                Operation::AuditRead | Operation::AuditVerify | Operation::RelayRouteList
            ) {
                assert!(!allows(Role::Auditor, op), "auditor may {op:?}");
            }
        }
        for op in [
            Operation::RecordReveal,
            Operation::RecordSearch,
            Operation::AccessRequestApprove,
        ] {
            assert!(!allows(Role::PaymentService, op));
        }
        assert!(!allows(Role::Admin, Operation::RecordRead));
        assert!(!allows(Role::Admin, Operation::RecordReveal));
        assert!(!allows(Role::Admin, Operation::SubjectRead));
        assert!(!allows(Role::PaymentService, Operation::SubjectRead));
        assert!(!allows(Role::PaymentService, Operation::HoldRelease));
        assert!(!allows(Role::ComplianceOfficer, Operation::HoldRelease));
    }

    /// A publishable key is public: it may create a card and attach a CVC,
    /// and nothing else at all.
    #[test]
    fn a_collector_may_create_cards_and_attach_cvcs_only() {
        for op in Operation::ALL {
            let expected = matches!(
                op,
                Operation::RecordCreate(RecordType::Card) | Operation::CvcAttach
            );
            assert_eq!(allows(Role::Collector, op), expected, "{op:?}");
        }
        assert!(allows(Role::PaymentService, Operation::CvcAttach));
        for role in [
            Role::Admin,
            Role::Auditor,
            Role::ComplianceOfficer,
            Role::ComplianceApprover,
        ] {
            assert!(!allows(role, Operation::CvcAttach), "{role:?}");
        }
    }

    /// A scraper's key may read the metrics and do nothing else; only
    /// admins share that one operation.
    #[test]
    fn the_metrics_role_reads_metrics_only() {
        for op in Operation::ALL {
            assert_eq!(
                allows(Role::Metrics, op),
                op == Operation::SysMetrics,
                "{op:?}"
            );
        }
        for role in Role::ALL {
            assert_eq!(
                allows(role, Operation::SysMetrics),
                matches!(role, Role::Admin | Role::Metrics),
                "{role:?}"
            );
        }
        assert!(Role::Metrics.fits(PrincipalKind::Service));
        assert!(!Role::Metrics.fits(PrincipalKind::Staff));
        assert!(!Role::Metrics.fits(PrincipalKind::Publishable));
        assert!(separation_of_duties(&[Role::Metrics]).is_none());
        for other in Role::ALL {
            if other != Role::Metrics {
                assert!(
                    separation_of_duties(&[Role::Metrics, other]).is_some(),
                    "{other:?}"
                );
            }
        }
    }

    #[test]
    fn roles_fit_kinds() {
        assert!(!Role::PaymentService.fits(PrincipalKind::Staff));
        assert!(!Role::ComplianceOfficer.fits(PrincipalKind::Service));
        assert!(
            Role::Auditor.fits(PrincipalKind::Staff) && Role::Auditor.fits(PrincipalKind::Service)
        );
        for role in Role::ALL {
            let publishable = role.fits(PrincipalKind::Publishable);
            assert_eq!(publishable, role == Role::Collector, "{role:?}");
            if role == Role::Collector {
                assert!(!role.fits(PrincipalKind::Service) && !role.fits(PrincipalKind::Staff));
            }
        }
        assert!(separation_of_duties(&[Role::Collector, Role::Auditor]).is_some());
        assert!(separation_of_duties(&[Role::Collector]).is_none());
    }
}
