//! The typed mesh API: desired state, observe, plan and apply for VIP and DNS round-robin services.
#![deny(missing_docs)]
