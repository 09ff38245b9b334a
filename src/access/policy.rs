//! The one table of operation × role. Deny by default: an operation a role
//! is not listed for is forbidden. docs/access-control.md prints this table.

use serde::{Deserialize, Serialize};

use super::PrincipalKind;

/// Built-in roles (API.md "Principals and sessions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    PaymentService,
    ComplianceOfficer,
    ComplianceApprover,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::PaymentService,
        Role::ComplianceOfficer,
        Role::ComplianceApprover,
        Role::Auditor,
    ];

    /// Whether a principal of `kind` may hold this role: the payment
    /// service is a machine; compliance staff are people.
    pub fn fits(self, kind: PrincipalKind) -> bool {
        match self {
            Role::PaymentService => kind == PrincipalKind::Service,
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
    PrincipalCreate,
    PrincipalList,
    PrincipalDisable,
    AuditRead,
    AuditVerify,
    KeysRead,
    KeysRotate,
}

impl Operation {
    pub const ALL: [Operation; 8] = [
        Operation::SysSeal,
        Operation::PrincipalCreate,
        Operation::PrincipalList,
        Operation::PrincipalDisable,
        Operation::AuditRead,
        Operation::AuditVerify,
        Operation::KeysRead,
        Operation::KeysRotate,
    ];

    /// The audit action recorded for this operation.
    pub fn action(self) -> &'static str {
        match self {
            Operation::SysSeal => "sys.seal",
            Operation::PrincipalCreate => "principal.create",
            Operation::PrincipalList => "principal.list",
            Operation::PrincipalDisable => "principal.disable",
            Operation::AuditRead => "audit.read",
            Operation::AuditVerify => "audit.verify",
            Operation::KeysRead => "key.read",
            Operation::KeysRotate => "key.rotate",
        }
    }
}

/// Whether `role` may perform `op`. The whole policy.
pub fn allows(role: Role, op: Operation) -> bool {
    use Operation as O;
    use Role as R;
    match op {
        O::SysSeal
        | O::PrincipalCreate
        | O::PrincipalList
        | O::PrincipalDisable
        | O::KeysRead
        | O::KeysRotate => role == R::Admin,
        O::AuditRead | O::AuditVerify => matches!(role, R::Auditor | R::Admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_but_admin_and_auditor_holds_anything_yet() {
        for op in Operation::ALL {
            for role in [
                Role::PaymentService,
                Role::ComplianceOfficer,
                Role::ComplianceApprover,
            ] {
                assert!(!allows(role, op), "{role:?} may {op:?}");
            }
            assert!(allows(Role::Admin, op));
        }
    }

    #[test]
    fn roles_fit_kinds() {
        assert!(!Role::PaymentService.fits(PrincipalKind::Staff));
        assert!(!Role::ComplianceOfficer.fits(PrincipalKind::Service));
        assert!(
            Role::Auditor.fits(PrincipalKind::Staff) && Role::Auditor.fits(PrincipalKind::Service)
        );
    }
}
