//! The one table of operation × role. Deny by default: an operation a role
//! is not listed for is forbidden.

use serde::{Deserialize, Serialize};

/// Built-in roles (API.md "Principals and sessions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

/// Operations that need a role. Public operations (health, unseal, the
/// OpenAPI document) are not listed: they need no credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    SysSeal,
}

impl Operation {
    pub const ALL: [Operation; 1] = [Operation::SysSeal];
}

/// Whether `role` may perform `op`.
pub fn allows(role: Role, op: Operation) -> bool {
    use Operation as O;
    use Role as R;
    matches!((op, role), (O::SysSeal, R::Admin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admin_may_seal() {
        for role in Role::ALL {
            assert_eq!(allows(role, Operation::SysSeal), role == Role::Admin);
        }
    }
}
