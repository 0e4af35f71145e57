//! Shared by the guest tests and the demos.
pub mod firewall;
pub mod ingress_mesh;
pub mod vip_net;
