//! placeholder until merged
pub fn describe_fatal(_e: &rumqttc::ConnectionError) -> Option<String> { None }
