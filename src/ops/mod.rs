//! What operators see and say: status documents and topics ([`status`]), control
//! commands ([`control`]), removing a node's documents ([`forget`]), pending lists ([`pending`]), conflict copies ([`conflicts`]), Prometheus metrics
//! ([`metrics`]) and change hooks ([`hook`]).

pub mod conflicts;
pub mod control;
pub mod forget;
pub mod hook;
pub mod metrics;
pub mod pending;
pub mod status;
