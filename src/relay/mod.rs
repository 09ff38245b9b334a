//! The relay: the vault puts card data into a processor's request.
//!
//! - `splice`: `{{token:field}}` placeholders, structurally spliced.
//! - `mask`: masking of relayed values and card numbers in answers.
//! - `upstream`: the outbound HTTPS client and its destination checks.
//!
//! (Routes and invocation are in `routes` and `invoke`, helper C1's part.)

pub mod mask;
pub mod splice;
pub mod upstream;
