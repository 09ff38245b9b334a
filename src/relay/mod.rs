//! The relay: the vault puts card data into a processor's request, so the
//! merchant's own servers never hold it (docs/payment-path.md).
//!
//! - `routes`: where card data may go, under dual control, sealed at rest.
//! - `invoke`: what an invocation takes from a record and a request.
//! - `splice`: `{{token:field}}` placeholders, structurally spliced.
//! - `mask`: masking of relayed values and card numbers in answers.
//! - `upstream`: the outbound HTTPS client and its destination checks.
//!
//! Nothing here decides who may call what (that is `access` and `api`),
//! and no value sent upstream is ever logged, audited or stored.

pub mod invoke;
pub mod mask;
pub mod routes;
pub mod splice;
pub mod upstream;
