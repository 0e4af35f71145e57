//! The task side of encap services: published-port translation and MSS clamping
//! ([`Dataplane::set_task_port`]).

use super::Dataplane;
use crate::{
    Error,
    maps::{MapLayer, TaskPortMap},
    model::ServiceKey,
};

impl<M: MapLayer> Dataplane<M> {
    /// Sets the task side of encap service `vip` (`vip.port` is the published port): packets to
    /// `vip:published` are delivered to `vip:target`, and replies from `vip:target` leave as
    /// `vip:published` with the MSS of their SYN-ACK clamped to
    /// [`Config::encap_mtu`](crate::Config::encap_mtu) (the client's segments to the task are
    /// the ones the node encapsulates). With `target == published` only the clamping stays. A
    /// later call with another target replaces the earlier one.
    ///
    /// # Errors
    ///
    /// Map errors.
    pub fn set_task_port(&mut self, vip: ServiceKey, target: u16) -> Result<(), Error> {
        let translate = (target != vip.port).then_some(target);
        let tkey = ServiceKey {
            port: target,
            ..vip
        };
        if let Some(&old) = self.task_targets.get(&vip).filter(|&&old| old != target) {
            let okey = ServiceKey { port: old, ..vip };
            self.maps
                .set_task_port(TaskPortMap::Egress, &okey.to_abi(), None)?;
        }
        self.maps
            .set_task_port(TaskPortMap::Ingress, &vip.to_abi(), translate)?;
        self.maps
            .set_task_port(TaskPortMap::Egress, &tkey.to_abi(), Some(vip.port))?;
        self.task_targets.insert(vip, target);
        Ok(())
    }

    /// The task-side translations programmed: VIP:published → target, in key order.
    pub fn task_ports(&self) -> &std::collections::BTreeMap<ServiceKey, u16> {
        &self.task_targets
    }

    /// Removes the task side of `vip` ([`Dataplane::set_task_port`]); removing what is absent
    /// is success.
    ///
    /// # Errors
    ///
    /// Map errors.
    pub fn remove_task_port(&mut self, vip: ServiceKey) -> Result<(), Error> {
        if let Some(target) = self.task_targets.remove(&vip) {
            let tkey = ServiceKey {
                port: target,
                ..vip
            };
            self.maps
                .set_task_port(TaskPortMap::Egress, &tkey.to_abi(), None)?;
        }
        self.maps
            .set_task_port(TaskPortMap::Ingress, &vip.to_abi(), None)
    }
}
