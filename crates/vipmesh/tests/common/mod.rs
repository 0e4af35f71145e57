//! Shared by the guest tests and the ingress demo.
pub mod ingress_mesh;
