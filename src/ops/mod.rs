//! What operators see and say: status documents and topics ([`status`]), status
//! readers ([`control`]), resync commands ([`resync`]), removing a node's documents
//! ([`forget`]), pending lists ([`pending`]), conflict copies ([`conflicts`]), Prometheus metrics
//! ([`metrics`]) and change hooks ([`hook`]).

pub mod conflicts;
pub mod control;
pub mod forget;
pub mod hook;
pub mod metrics;
pub mod pending;
pub mod resync;
pub mod status;
